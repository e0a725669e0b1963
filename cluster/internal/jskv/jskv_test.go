package jskv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/natstest"
)

func TestUnanswered(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{fmt.Errorf("create: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{nats.ErrNoResponders, true},
		{jetstream.ErrNoStreamResponse, true},
		{&jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}, true},
		{&jetstream.APIError{Code: 400, Description: "stream name already in use with a different configuration"}, false},
		{jetstream.ErrStreamNameAlreadyInUse, false},
		{context.Canceled, false},
		{errors.New("something else"), false},
	} {
		if got := Unanswered(tc.err); got != tc.want {
			t.Errorf("Unanswered(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetry(t *testing.T) {
	t.Run("answered on the third attempt", func(t *testing.T) {
		calls := 0
		v, err := Retry(context.Background(), nil, "x", func(ctx context.Context) (int, error) {
			calls++
			if _, ok := ctx.Deadline(); !ok {
				t.Error("an attempt without a bound")
			}
			if calls < 3 {
				return 0, nats.ErrTimeout
			}
			return 7, nil
		})
		if v != 7 || err != nil || calls != 3 {
			t.Errorf("got %d, %v after %d calls", v, err, calls)
		}
	})
	t.Run("a refusal ends it", func(t *testing.T) {
		calls := 0
		refusal := &jetstream.APIError{Code: 400, Description: "bad config"}
		_, err := Retry(context.Background(), nil, "x", func(context.Context) (int, error) {
			calls++
			return 0, refusal
		})
		if !errors.Is(err, refusal) || calls != 1 {
			t.Errorf("got %v after %d calls", err, calls)
		}
	})
	t.Run("ctx ends it", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := Retry(ctx, nil, "x", func(ctx context.Context) (int, error) {
			<-ctx.Done() // never answered
			return 0, ctx.Err()
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v", err)
		}
	})
}

// TestConcurrentCreate: frontends of a new site create its stream at the
// same moment; every one gets it, well within a start's patience.
func TestConcurrentCreate(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	cfg := jetstream.StreamConfig{Name: "SITE", Subjects: []string{"site.>"}, Storage: jetstream.FileStorage, Replicas: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			js, err := jetstream.New(c.Connect(t))
			if err != nil {
				t.Error(err)
				return
			}
			start := time.Now()
			if _, err := Stream(ctx, js, cfg, nil); err != nil {
				t.Errorf("creator %d: %v", i, err)
				return
			}
			t.Logf("creator %d: %v", i, time.Since(start).Round(time.Millisecond))
		})
	}
	wg.Wait()
}
