// Package jskv is what the clustered backend's packages share about
// JetStream: KV buckets kept as plain streams (their configuration, and a
// key's last value read from the stream's leader), and creating streams
// at start through the moments when the cluster cannot answer yet.
//
// A request to JetStream's API gets no answer at all, rather than an
// error, while the cluster has no meta leader (nodes just started), while
// a stream just created has no leader, or while one is being elected. Two
// frontends of a new site starting at the same moment both create the
// site's streams; measured on a 3-node cluster, both create requests then
// went unanswered until their 30 s contexts ran out, though the stream had
// a leader 0.2 s later. So each attempt here is bounded, and retried.
package jskv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The bound on one attempt starts at firstAttempt, since a create that is
// answered at all is answered in well under a second (0.1–0.3 s measured),
// and doubles up to maxAttempt for a cluster that is merely slow: a retried
// create or read is harmless, but one that could never finish within its
// bound would be retried in vain.
const (
	firstAttempt = time.Second
	maxAttempt   = 8 * time.Second
)

// retryPause spaces the attempts: an election takes seconds.
const retryPause = 100 * time.Millisecond

// Stream creates or updates the stream cfg, retrying unanswered attempts
// until ctx ends. An answer that refuses the stream (a configuration the
// cluster rejects) ends it at once.
func Stream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, log *slog.Logger) (jetstream.Stream, error) {
	return Retry(ctx, log, "create stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, cfg)
	})
}

// Retry runs fn, each time with a context bounded as above, until it is
// answered: it returns, or fails with an error other than Unanswered, or
// ctx ends.
func Retry[T any](ctx context.Context, log *slog.Logger, what string, fn func(context.Context) (T, error)) (T, error) {
	for attempt := firstAttempt; ; attempt = min(2*attempt, maxAttempt) {
		actx, cancel := context.WithTimeout(ctx, attempt)
		v, err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !Unanswered(err) {
			return v, err
		}
		if log != nil {
			log.Debug("jetstream not answering yet, retrying", "what", what, "err", err)
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(retryPause):
		}
	}
}

// Unanswered reports whether err says JetStream did not answer (yet),
// rather than refusing.
func Unanswered(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return true
	case errors.As(err, &apiErr):
		// 503s: "JetStream system temporarily unavailable", "no suitable
		// peers" while the nodes find each other.
		return apiErr.Code == 503
	}
	return false
}

// Bucket is the stream of the KV bucket name (history 1, max age ttl, 0 for
// none), with the settings nats.go gives such a bucket but one: direct get
// is off, so that every read is served by the stream's leader. With it on,
// a read may be served by a follower that has not yet applied the last
// write: a lease read from a lagging follower could look expired, a claim
// look free, a record written back look unchanged.
func Bucket(name string, replicas int, ttl time.Duration) jetstream.StreamConfig {
	dup := 2 * time.Minute // nats.go's KV default
	if ttl > 0 && ttl < dup {
		dup = ttl
	}
	return jetstream.StreamConfig{
		Name:              "KV_" + name,
		Subjects:          []string{"$KV." + name + ".>"},
		MaxMsgsPerSubject: 1,
		MaxBytes:          -1,
		MaxAge:            ttl,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        dup,
		Discard:           jetstream.DiscardNew,
		AllowDirect:       false,
	}
}

// Subject is the stream subject of key in bucket.
func Subject(bucket, key string) string { return "$KV." + bucket + "." + key }

// Operation is the header nats.go's KV puts on delete and purge markers.
const Operation = "KV-Operation"

// LastValue reads key's value from the leader of bucket's stream st,
// within timeout: nil for a key deleted (or never written), with the
// revision to compare-and-set over (0 if the key never existed or its
// entry expired). A value stored empty is non-nil.
func LastValue(ctx context.Context, st jetstream.Stream, bucket, key string, timeout time.Duration) (value []byte, rev uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := st.GetLastMsgForSubject(ctx, Subject(bucket, key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	if m.Header.Get(Operation) != "" {
		return nil, m.Sequence, nil
	}
	if m.Data == nil {
		m.Data = []byte{}
	}
	return m.Data, m.Sequence, nil
}
