package syncer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// ImageStatuser asks the Images API about one image: its status, or found
// false when Glance answers 404. An error means Glance could not be asked.
type ImageStatuser interface {
	ImageStatus(ctx context.Context, id string) (status string, found bool, err error)
}

// imageStore is what a run needs of the datadir; *store.Store is one.
type imageStore interface {
	Deleted(id string) (bool, error)
	// Delete moves the image's file out of the datadir (reversibly) and
	// leaves a tombstone; md5hex is the event's checksum, recorded with it.
	Delete(id, md5hex string) (removed bool, err error)
	// Evict is Delete without the tombstone: the image left this store only.
	Evict(id, md5hex string) (removed bool, err error)
	// KeepForScrubber marks this node's copy of a pending_delete image as
	// glance-scrubber's, so nothing of ours removes it.
	KeepForScrubber(id string) error
	Size(id string) (size int64, regular bool, err error)
	Check(ctx context.Context, id string, size int64, md5hex string) (store.State, error)
	Path(id string) (string, error)
	PartialPath(id, md5hex string) (string, error)
	BeginMultihash(ctx context.Context, id string, size int64, md5hex string, mh store.Multihash) (*store.Partial, error)
	BeginReserveLater(ctx context.Context, id string, size int64, md5hex string, mh store.Multihash) (*store.Partial, error)
	// Sync makes every image placed before it (Partial.Place) durable.
	Sync() error
}

var _ imageStore = (*store.Store)(nil)

// acker is a received message, as far as settling it goes.
type acker interface{ Ack() error }

// publisher puts a message on a queue, confirmed.
type publisher interface {
	Publish(ctx context.Context, queue string, m broker.Message) error
}

// Config is what a sync-images run needs, as plain values.
type Config struct {
	Self        node.Name                   // this node
	Peers       map[node.Name]transfer.Peer // keyed as PeerOrder spells them
	PeerOrder   []node.Name                 // api_nodes order, this node excluded
	Auth        transfer.Auth
	Queue       string // this node's queue
	ParkQueue   string // where messages that cannot succeed go
	MaxAttempts int    // runs a message may fail before it is parked
	Transfers   int    // images fetched at once
	IdleTimeout time.Duration
	BWLimit     float64 // MB/s over all transfers; 0 = none
	DryRun      bool
	// Strategy chooses sources: StrategyChain, or StrategyPublisher (also "").
	Strategy string
	// Nodes is api_nodes, this node included: the chain's order.
	Nodes []node.Name
	// StallTimeout is how long a peer's partial may stop growing before it
	// is taken as abandoned (chain strategy).
	StallTimeout time.Duration
	// KeepPendingDelete leaves the file of an image.delete whose status is
	// pending_delete (delayed_delete) in place: pending_delete = keep.
	KeepPendingDelete bool
	// Progress, if set, is told about each transfer's bytes as they are
	// written (never by wrapping the SFTP reader, which would stop pipelining).
	Progress Progress
	// Glance, if set, confirms every delete before anything is removed.
	Glance ImageStatuser
	// Images, if set, says which stores hold an image and gives its
	// multihash, checked on every fetch besides the MD5.
	Images ImageGetter
	// Ledger, if set, is shared by the Syncers of one run (each attempt
	// of a resumed step) or of one daemon, so a message the broker hands
	// out again after a lost ack is counted once in Result (see Ledger).
	Ledger *Ledger
}

// Progress follows transfers, e.g. to draw a progress line on a terminal.
type Progress interface {
	// Track is called as a fetch of image from peer begins at offset; the
	// returned writer wraps w, and done is called when the fetch ends.
	Track(image, peer string, offset, total int64, w io.Writer) (tracked io.Writer, done func())
}

// Result counts what a run did.
type Result struct {
	Fetched, Deleted, Skipped, Deferred, Parked int
	Bytes                                       int64
	Seconds                                     float64 // spent in transfers, summed over them

	// Events counts messages by event type and outcome (fetched, deleted,
	// skipped, ignored, deferred, parked), for metrics.
	Events map[Outcome]int
	// Failures counts failed attempts and parked messages by cause (see Cause).
	Failures map[string]int
}

// Outcome is what became of one message of one event type.
type Outcome struct{ Event, Result string }

// Syncer drains one node's queue into its datadir: it decides what each
// message asks (plan), has the fetcher or the store do it, and settles the
// message (ack, retry, park) and counts it.
type Syncer struct {
	// Immutable after New.
	cfg    Config
	conn   *broker.Conn
	stores []namedStore // every file store, each its own folder; Glance's default first
	log    *slog.Logger

	// Set once by Run (by the tests' constructor), before any lane starts.
	pub publisher
	f   *fetcher

	// daemon: set by serve before any lane starts. A deferred message then
	// carries its retry time (Serve holds it until then).
	daemon bool

	// unsettled counts the messages Run took and has not acked (intake).
	unsettled atomic.Int64

	mu    sync.Mutex // guards the fields below
	res   Result
	taken Result // bytes and seconds already reported by TakeResult
	bad   error  // a broker failure: stop taking messages
	lanes *lanes // while Serve consumes: Exclusive queues there

	serving     chan struct{} // closed once Serve consumes (Serving)
	servingOnce sync.Once
}

// New prepares a run over every file store, Glance's default store first;
// nothing is contacted until Run.
func New(cfg Config, conn *broker.Conn, stores []Store, log *slog.Logger) *Syncer {
	ns := make([]namedStore, len(stores))
	for i, st := range stores {
		ns[i] = namedStore{name: st.Name, st: st.Store}
	}
	return newMultiSyncer(cfg, conn, ns, log)
}

func newSyncer(cfg Config, conn *broker.Conn, st imageStore, log *slog.Logger) *Syncer {
	return newMultiSyncer(cfg, conn, []namedStore{{st: st}}, log)
}

func newMultiSyncer(cfg Config, conn *broker.Conn, stores []namedStore, log *slog.Logger) *Syncer {
	return &Syncer{cfg: cfg.withDefaults(), conn: conn, stores: stores, log: log, serving: make(chan struct{})}
}

func (cfg Config) withDefaults() Config {
	if cfg.Transfers < 1 {
		cfg.Transfers = 1
	}
	if cfg.MaxAttempts < 1 {
		cfg.MaxAttempts = 1
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = time.Minute
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	return cfg
}

// nodes is api_nodes by short name, this node included.
func (s *Syncer) nodes() []node.Name {
	if len(s.cfg.Nodes) > 0 {
		return s.cfg.Nodes
	}
	return append([]node.Name{s.cfg.Self}, s.cfg.PeerOrder...)
}

// job is one message for one image; jobs of an image run in queue order.
type job struct {
	d      acker
	m      broker.Message
	ev     *notification.Event
	action Action
	excl   *exclusive // work from outside the queue (Exclusive); d, m and ev unset
}

// image is the id of the image whose lane j belongs to.
func (j job) image() string {
	if j.excl != nil {
		return j.excl.id
	}
	return j.ev.Image.ID
}

// Run takes at most the messages that were ready when it started, so messages
// it re-queues are left for the next run instead of spinning in this one.
// It reads the queue at most nodequeue.HeldBodies of bodies ahead of its
// acks, and parks a body over nodequeue.MaxBody unread (triage).
func (s *Syncer) Run(ctx context.Context) (Result, error) {
	if err := s.conn.DeclareQueue(s.cfg.Queue); err != nil {
		return Result{}, err
	}
	if err := s.conn.DeclareQueue(s.cfg.ParkQueue); err != nil {
		return Result{}, err
	}
	qs, err := s.conn.Inspect(s.cfg.Queue)
	if err != nil {
		return Result{}, err
	}
	// The queue is read at most nodequeue.HeldBodies of bodies ahead of
	// the acks, on a connection of the receiver's own: anyone who may write
	// to the default exchange can put bodies as large as the broker allows
	// in this queue, and a prefetch alone would read 256 of them at once.
	// A dry run takes one message at a time (Get) and acks none, which the
	// bounded receiver's reads would wait for: it reads on conn.
	var recv *broker.Receiver
	if s.cfg.DryRun {
		recv, err = s.conn.Receive(s.cfg.Queue)
	} else {
		recv, err = s.conn.ReceiveBounded(ctx, s.cfg.Queue, nodequeue.HeldBodies)
	}
	if err != nil {
		return Result{}, err
	}
	// Closing the receiver returns every message not acked to the queue, in its
	// place: that is how a run interrupted by its deadline leaves work for the next.
	defer recv.Close()
	// A count of 0 may be a quorum queue's leader slow to answer: a run
	// that believed it left its queue for the next, on every node of a busy
	// cluster (broker.Recount).
	first, ready, err := broker.Recount(recv, qs.Messages, s.cfg.Queue, s.log)
	if err != nil {
		return Result{}, err
	}
	if ready == 0 {
		s.log.Debug("queue empty", "queue", s.cfg.Queue)
		return Result{}, nil
	}
	pub, err := s.conn.Publisher()
	if err != nil {
		return Result{}, err
	}
	defer pub.Close()
	s.pub = pub
	// The engine's own store is the default one; each fetch names its target.
	s.f = newFetcher(s.cfg, s.stores[0].st, s.log)
	s.f.syncing = s.running
	if s.cfg.Strategy == StrategyChain {
		defer s.announce()()
	}
	defer s.f.close()

	next := func(context.Context) (*broker.Delivery, error) {
		if d := first; d != nil {
			first = nil
			return d, nil
		}
		return recv.Get()
	}
	// A dry run acks nothing (a consumer would stall at the prefetch);
	// otherwise acks are sent together (acks.go), all of them before the
	// receiver closes.
	var acks *ackBatch
	if !s.cfg.DryRun {
		it := &intake{first: first, src: recv, left: ready, idle: intakeIdle, unsettled: &s.unsettled}
		if rest := ready - it.held(); rest > 0 {
			if it.in, err = recv.Consume(min(rest, maxPrefetch)); err != nil {
				return Result{}, err
			}
		}
		next = it.next
		acks = newAckBatch(ackDelay, s.durable, s.fail)
		s.f.placeOnly = true
	}
	adm := NewAdmission(s.cfg.Transfers)
	lanes := map[string]chan job{}
	var wg sync.WaitGroup
	for i := 0; i < ready && ctx.Err() == nil && s.broken() == nil; i++ {
		d, err := next(ctx)
		if err != nil {
			s.fail(err)
			break
		}
		if d == nil {
			break
		}
		// The delivery stays for its ack; its body travels in m, so a
		// large one is garbage as soon as it is parked, not at the ack.
		m := d.Message
		d.Body = nil
		var a acker = d
		if acks != nil {
			a = acks.take(d)
		}
		j, ok := s.take(ctx, a, d.Redelivered, m)
		if !ok {
			continue
		}
		id := j.ev.Image.ID
		lane, ok := lanes[id]
		if !ok {
			lane = make(chan job, 16)
			lanes[id] = lane
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.runLane(ctx, lane, adm)
			}()
		}
		lane <- j
	}
	for _, l := range lanes {
		close(l)
	}
	wg.Wait()
	if acks != nil {
		if err := acks.close(); err != nil {
			s.fail(err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.Bytes, s.res.Seconds = s.f.totals()
	if s.bad != nil {
		return s.res, s.bad
	}
	return s.res, ctx.Err()
}

// durable makes every image placed so far durable, in each store: the
// run's acks wait for it (acks.go).
func (s *Syncer) durable() error {
	for _, ns := range s.stores {
		if err := ns.st.Sync(); err != nil {
			return err // it names the datadir
		}
	}
	return nil
}

// take is triage of a message as the broker hands it out, its outcome
// counted once over every Syncer of the Ledger (redelivered: the broker
// handed it out before).
func (s *Syncer) take(ctx context.Context, d acker, redelivered bool, m broker.Message) (job, bool) {
	return s.triage(ctx, s.cfg.Ledger.wrap(d, redelivered, m), m)
}

// triage settles a message as it is taken off the queue when it needs no
// lane: parked when its body is over nodequeue.MaxBody, undecodable, or
// planned to be; acked when it asks nothing. Otherwise it returns the job
// for the image's lane. Run and Serve take every message through it.
func (s *Syncer) triage(ctx context.Context, d acker, m broker.Message) (job, bool) {
	if capped, reason, over := nodequeue.Oversize(m); over {
		// No copy duplicate-notifications makes is this large: it was
		// published into the node queue directly. Never decoded.
		s.park(ctx, d, capped, "", "", "oversize", reason)
		freeOversize()
		return job{}, false
	}
	ev, err := notification.Decode(m.Body)
	if err != nil {
		s.park(ctx, d, m, "", "", "undecodable", err.Error())
		return job{}, false
	}
	action, why, cause := plan(ev, s.nodes())
	switch action {
	case Ignore:
		s.log.Debug("ignored", "event", ev.EventType, "image", imageID(ev), "reason", why)
		s.ack(d)
		s.tally(d, ev.EventType, "ignored", "")
		return job{}, false
	case Park:
		s.park(ctx, d, m, ev.EventType, imageID(ev), cause, why)
		return job{}, false
	}
	return job{d: d, m: m, ev: ev, action: action}, true
}

// freeOversize returns the memory of the oversize bodies parked so far to
// the system. amqp091-go assembles a body by appending its frames, about
// 2.25 times its size in garbage; a flood of them (a credential that writes
// into the node queue directly) outran the collector under load, its CPU
// limiter letting the heap pass the soft memory limit: peak RSS +68.6 MiB
// over the same run without them, in one CI run of a test that measures
// +55 on a quiet machine. Never called for a message duplicate-notifications
// made (none is over nodequeue.MaxBody).
func freeOversize() { debug.FreeOSMemory() }

// runLane handles one image's jobs in order. After a fetch of the image has
// been re-queued, later fetch events of it in this run are covered by that
// copy, but only those that announce the same data: a bad event re-queued
// must not swallow a genuine one.
func (s *Syncer) runLane(ctx context.Context, lane <-chan job, adm *Admission) {
	var requeued *notification.Image // the event of the re-queued fetch, if any
	for j := range lane {
		if ctx.Err() != nil || s.broken() != nil {
			continue // left unacked: back to the queue when the run ends
		}
		id := j.ev.Image.ID
		log := s.log.With("image", id, "event", j.ev.EventType)
		switch j.action {
		case Delete:
			requeued = nil
			s.delete(ctx, log, j)
		case Fetch:
			if covers(requeued, j.ev.Image) {
				log.Info("skipped", "reason", "a re-queued copy of an earlier event covers it")
				s.tally(j.d, j.ev.EventType, "skipped", "")
				s.ack(j.d)
				continue
			}
			release, ok := adm.Acquire(ctx, j.ev.Image.Size)
			if !ok {
				continue // the run is ending: left unacked for the next
			}
			if s.fetch(ctx, log, j) {
				requeued = j.ev.Image
			}
			release()
		}
	}
}

// covers says whether a re-queued fetch of prev does the work of next.
func covers(prev, next *notification.Image) bool {
	return prev != nil && prev.Size == next.Size && prev.Checksum == next.Checksum
}

// delete removes the image here once the Images API, when there is one,
// agrees that it is gone. Plan has already checked who sent the event.
func (s *Syncer) delete(ctx context.Context, log *slog.Logger, j job) {
	img := j.ev.Image
	status := img.Status
	if s.cfg.Glance != nil {
		st, found, err := s.cfg.Glance.ImageStatus(ctx, img.ID)
		if err != nil {
			// Never delete blind: the message waits for a run that can ask.
			if ctx.Err() != nil {
				s.tally(j.d, j.ev.EventType, "deferred", "")
				return
			}
			s.retry(ctx, j, fmt.Errorf("confirming the delete with the Images API: %w", err)) // the error names the image
			return
		}
		switch {
		case !found, st == "deleted", st == "killed":
		case st == "pending_delete":
			status = st
		default:
			s.park(ctx, j.d, j.m, j.ev.EventType, img.ID, "glance_disagrees", "Glance still lists the image as "+orNone(st))
			return
		}
		log.Debug("delete confirmed", "glance_status", orNone(st), "found", found)
	}
	if why, scrubber := keepPending(status, node.Name(j.ev.Publisher), s.cfg.Self, s.cfg.KeepPendingDelete); why != "" {
		// No tombstone either: glance-scrubber --restore may bring the
		// image back, and reconcile --prune trashes a copy once Glance
		// has forgotten the image.
		if s.cfg.DryRun {
			log.Info("would keep", "reason", why)
			return
		}
		if scrubber {
			for _, ns := range s.stores {
				if err := ns.st.KeepForScrubber(img.ID); err != nil {
					s.retry(ctx, j, err)
					return
				}
			}
		}
		log.Info("skipped", "reason", why)
		s.tally(j.d, j.ev.EventType, "skipped", "")
		s.ack(j.d)
		return
	}
	if s.cfg.DryRun {
		log.Info("would delete")
		return
	}
	// The image leaves every store: each gets a tombstone, copy or not.
	removed := false
	for _, ns := range s.stores {
		r, err := ns.st.Delete(img.ID, img.Checksum)
		if err != nil {
			log.Error("delete failed", "store", ns.String(), "err", err)
			s.retry(context.Background(), j, err)
			return
		}
		removed = removed || r
	}
	if removed {
		log.Info("deleted")
	} else {
		log.Info("deleted", "note", "no file was here")
	}
	s.tally(j.d, j.ev.EventType, "deleted", "")
	s.ack(j.d)
}

// fetch makes sure the image is here, in every store it belongs in, and
// gone from the stores Glance no longer lists it in; it reports whether the
// message was re-queued for a later run.
func (s *Syncer) fetch(ctx context.Context, log *slog.Logger, j job) bool {
	img := j.ev.Image
	order, fromSelf, ok := Sources(node.Name(j.ev.Publisher), s.cfg.Self, s.cfg.PeerOrder)
	if !ok {
		s.park(ctx, j.d, j.m, j.ev.EventType, img.ID, "unknown_publisher", fmt.Sprintf("publisher %q is not one of api_nodes", j.ev.PublisherID))
		return false
	}
	p, err := s.place(ctx, log, img, order)
	if err != nil {
		return s.settle(ctx, log, j, err)
	}
	if err := s.evict(log, img, p.evict); err != nil {
		return s.retry(ctx, j, err)
	}
	if len(p.into) == 0 {
		log.Info("skipped", "reason", "in none of this node's file stores")
		s.tally(j.d, j.ev.EventType, "skipped", "")
		s.ack(j.d)
		return false
	}
	fetched := false
	for _, ns := range p.into {
		lg := log
		if len(s.stores) > 1 {
			lg = log.With("store", ns.String())
		}
		did, err := s.fetchInto(ctx, lg, j, ns.st, order, fromSelf, &p)
		if err != nil {
			return s.settle(ctx, lg, j, err)
		}
		fetched = fetched || did
	}
	if fetched {
		if s.cfg.DryRun {
			return false
		}
		return s.settle(ctx, log, j, nil)
	}
	s.tally(j.d, j.ev.EventType, "skipped", "")
	s.ack(j.d)
	return false
}

// fetchInto makes sure the image is in store st, and says whether it moved
// bytes (in a dry run, would have); it logs why not.
func (s *Syncer) fetchInto(ctx context.Context, log *slog.Logger, j job, st imageStore, order []node.Name, fromSelf bool, p *placement) (bool, error) {
	img := j.ev.Image
	if dead, err := st.Deleted(img.ID); err != nil {
		return false, err
	} else if dead {
		log.Info("skipped", "reason", "image was deleted here earlier")
		return false, nil
	}
	if fromSelf {
		// glance-api wrote this file here; hashing a large image on every event
		// about it would cost minutes, and Glance verified it while writing.
		size, regular, err := st.Size(img.ID)
		if err != nil {
			return false, err
		}
		if regular && size == img.Size {
			log.Info("skipped", "reason", "published by this node and present")
			return false, nil
		}
		log.Warn("published by this node but not here in full; looking for it on the peers", "size", size)
	}
	state, err := st.Check(ctx, img.ID, img.Size, img.Checksum)
	if err != nil {
		return false, err
	}
	if state == store.Verified {
		log.Info("skipped", "reason", "present and verified")
		return false, nil
	}
	if s.cfg.DryRun {
		log.Info("would fetch", "size", img.Size, "sources", order)
		return true, nil
	}
	if p.askHash {
		if p.mh, err = s.multihash(ctx, log, img); err != nil {
			return false, err
		}
		p.askHash = false
	}
	t, err := targetIn(st, Want{ID: img.ID, Size: img.Size, MD5: img.Checksum, Multihash: p.mh})
	if err != nil {
		return false, err
	}
	var pk picker = s.f.publisherOrder(log, t, order)
	if up, down := s.chainFor(node.Name(j.ev.Publisher)); up != nil {
		pk = s.f.chain(log, t, up, down)
	}
	if _, _, err = s.f.fetch(ctx, log, t, pk); err != nil {
		return false, err
	}
	return true, nil
}

// retry re-queues the message with one more attempt counted, or parks it once
// max_attempts runs have failed, or once whole copies from complete files
// have failed the event's checksum twice (the event, not the copies, is
// wrong then, and every further try would read the whole image again). It
// reports whether the message was re-queued.
func (s *Syncer) retry(ctx context.Context, j job, cause error) bool {
	if superseded(ctx) {
		s.dropSuperseded(j)
		return false
	}
	if s.staleJob(j) {
		return false // a copy of it comes back on the new channel
	}
	if ctx.Err() != nil {
		// Stopping: the message goes back unacked, no attempt counted.
		s.tally(j.d, j.ev.EventType, "deferred", "")
		return false
	}
	attempts := nodequeue.Attempts(j.m, s.cfg.MaxAttempts) + 1
	id := imageID(j.ev)
	if s.cfg.DryRun {
		// Nothing is acked in a dry run: a re-queued copy would be a duplicate.
		s.log.Info("would leave for the next run", "image", id, "attempt", attempts, "err", cause)
		return false
	}
	mismatches := 0
	if n := wholeMismatches(cause); n > 0 {
		mismatches = nodequeue.Mismatches(j.m, s.cfg.MaxAttempts) + n
		if mismatches >= mismatchLimit {
			s.park(ctx, j.d, j.m, j.ev.EventType, id, "mismatch", fmt.Sprintf(
				"%d whole copies read from complete files on the peers did not match the event's size %d and checksum %s; last: %v",
				mismatches, j.ev.Image.Size, j.ev.Image.Checksum, cause))
			return false
		}
	}
	if attempts >= s.cfg.MaxAttempts {
		s.park(ctx, j.d, j.m, j.ev.EventType, id, "max_attempts", fmt.Sprintf("failed %d times, last: %v", attempts, cause))
		return false
	}
	m := nodequeue.Retried(j.m, attempts, mismatches, cause.Error())
	delay := time.Duration(0)
	if s.daemon {
		delay = retryDelay(attempts)
		m = nodequeue.Deferred(m, time.Now().Add(delay))
	}
	if err := s.pub.Publish(ctx, s.cfg.Queue, m); err != nil {
		s.fail(err)
		return false
	}
	s.ack(j.d)
	if s.daemon {
		s.log.Warn("deferred", "image", id, "attempt", attempts, "max_attempts", s.cfg.MaxAttempts, "retry_in", delay.String(), "err", cause)
	} else {
		s.log.Warn("left for the next run", "image", id, "attempt", attempts, "max_attempts", s.cfg.MaxAttempts, "err", cause)
	}
	s.tally(j.d, j.ev.EventType, "deferred", Cause(cause))
	return true
}

// park moves a message that can never succeed to the parking queue with the
// reason in a header, so it cannot block the queue and is not lost.
// event and cause label it for metrics.
func (s *Syncer) park(ctx context.Context, d acker, msg broker.Message, event, id, cause, reason string) {
	if s.cfg.DryRun {
		s.log.Info("would park", "image", id, "reason", reason)
		return
	}
	if err := s.pub.Publish(ctx, s.cfg.ParkQueue, nodequeue.Parked(msg, s.cfg.Self, reason)); err != nil {
		s.fail(err)
		return
	}
	s.ack(d)
	s.log.Warn("parked", "image", id, "queue", s.cfg.ParkQueue, "reason", reason)
	s.tally(d, event, "parked", cause)
}

func (s *Syncer) ack(d acker) {
	if s.cfg.DryRun {
		return
	}
	err := d.Ack()
	if err == nil {
		s.unsettled.Add(-1)
	}
	if err != nil {
		if s.daemon && broker.ChannelClosed(err) {
			// Its channel closed under a long transfer (consumer_timeout):
			// the message comes back on the new channel, and is settled
			// then against the placed file.
			s.log.Info("not acked: the channel it came on is closed; it comes back and is settled then", "err", err)
			return
		}
		s.fail(err)
	}
}

// tally counts the outcome of message d and, when it failed, its cause;
// not when d is a redelivery whose outcome was counted already (Ledger).
func (s *Syncer) tally(d acker, event, result, cause string) {
	if !firstCount(d) {
		return
	}
	if event == "" {
		event = "unknown"
	}
	s.count(func(r *Result) {
		switch result {
		case "fetched":
			r.Fetched++
		case "deleted":
			r.Deleted++
		case "skipped":
			r.Skipped++
		case "deferred":
			r.Deferred++
		case "parked":
			r.Parked++
		}
		if r.Events == nil {
			r.Events = map[Outcome]int{}
		}
		r.Events[Outcome{Event: event, Result: result}]++
		if cause != "" {
			if r.Failures == nil {
				r.Failures = map[string]int{}
			}
			r.Failures[cause]++
		}
	})
}

func (s *Syncer) count(f func(*Result)) {
	s.mu.Lock()
	f(&s.res)
	s.mu.Unlock()
}

func (s *Syncer) fail(err error) {
	s.mu.Lock()
	if s.bad == nil {
		s.bad = err
	}
	s.mu.Unlock()
}

func (s *Syncer) broken() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bad
}

func imageID(ev *notification.Event) string {
	if ev.Image == nil {
		return ""
	}
	return ev.Image.ID
}
