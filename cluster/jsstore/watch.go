package jsstore

import (
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// watchers calls the watchers of devices whose queues grew. Wakes come
// from this Store's own commits and, as core NATS messages on p.w.<dev>,
// from the other frontends' (a wake's body names the Store that sent it, and
// a Store ignores its own, already delivered directly: a watcher removed
// after a commit must not be called for it later). One goroutine makes every
// call, so calls for one device never overlap, and with no lock held.
type watchers struct {
	s    *Store
	kick chan struct{} // pending grew; capacity 1
	quit chan struct{}
	done chan struct{}

	mu sync.Mutex
	// Guarded by mu: the watcher of each device, and the devices to call
	// (a set, in arrival order).
	fns     map[string]func()
	pending []string
	queued  map[string]bool
}

func (w *watchers) init(s *Store) {
	w.s = s
	w.kick = make(chan struct{}, 1)
	w.quit = make(chan struct{})
	w.done = make(chan struct{})
	w.fns = map[string]func(){}
	w.queued = map[string]bool{}
}

// Watch registers fn as dev's watcher; nil removes it.
func (s *Store) Watch(dev string, fn func()) {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if fn == nil {
		delete(w.fns, dev)
		return
	}
	w.fns[dev] = fn
}

// wake tells this frontend's watchers of devs, and the other frontends'.
// Called after the entries are durable. A wake lost on the way (the
// connection fails) is not a lost message: the device's link reads its
// queue again when it (re)connects.
func (s *Store) wake(devs []string) {
	seen := make(map[string]bool, len(devs))
	for _, dev := range devs {
		if seen[dev] {
			continue
		}
		seen[dev] = true
		s.watch.add(dev)
		if err := s.nc.Publish(s.wakeSubj(dev), []byte(s.tag)); err != nil {
			s.log.Warn("jsstore publish wake", "err", err)
		}
	}
}

// onWake handles a wake from any frontend.
func (s *Store) onWake(m *nats.Msg) {
	if string(m.Data) == s.tag {
		return
	}
	dev, ok := parseDevKey(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	if !ok {
		s.log.Warn("jsstore bad wake subject", "subject", m.Subject)
		return
	}
	s.watch.add(dev)
}

// add queues a call of dev's watcher, if it has one.
func (w *watchers) add(dev string) {
	w.mu.Lock()
	if w.fns[dev] == nil || w.queued[dev] {
		w.mu.Unlock()
		return
	}
	w.queued[dev] = true
	w.pending = append(w.pending, dev)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// run makes the calls until stop.
func (w *watchers) run() {
	defer close(w.done)
	for {
		select {
		case <-w.quit:
			return
		case <-w.kick:
		}
		for {
			w.mu.Lock()
			if len(w.pending) == 0 {
				w.mu.Unlock()
				break
			}
			dev := w.pending[0]
			w.pending = w.pending[1:]
			delete(w.queued, dev)
			fn := w.fns[dev]
			w.mu.Unlock()
			select {
			case <-w.quit:
				return
			default:
			}
			if fn != nil {
				fn()
			}
		}
	}
}

// stop ends run, waiting for a call under way; calls still pending are
// dropped.
func (w *watchers) stop() {
	close(w.quit)
	<-w.done
}
