// etcdlock-go-interop: drives etcd's own Go recipes, concurrency.Election (clientv3/concurrency/election.go)
// and recipe.RWMutex (contrib/recipes/rwmutex.go), so etcdlock's tests can check that its Python election and
// read/write lock interoperate with them key for key, and so its benchmarks have a Go reference.
//
// Built offline in GOPATH mode from Debian's golang-etcd-server-dev (etcd 3.4) by scripts/build_go_interop.sh.
//
//	etcdlock-go-interop SUBCOMMAND [--endpoints H:P,...] [--ttl S] [flags]
//
//	elect      --name N --proposal P [--rounds K] [--hold-ms H] [--check PREFIX] [--proclaim V]
//	observe    --name N [--count C]
//	leader     --name N
//	rwlock     --name N --mode read|write [--rounds K] [--hold-ms H] [--check PREFIX]
//	electbench --name N --workers W --duration-s D
//
// stdout carries only machine-readable lines, one write per line (os.Stdout is unbuffered, so each line
// reaches the reader as soon as it is printed); diagnostics go to stderr. Exit codes: 0 success (also after
// SIGTERM/SIGINT, which make the program resign/unlock and revoke its session's lease), 1 error, 2 bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// cleanupTimeout bounds the work done after a signal (resign, unlock, leaving the occupancy check): it must
// finish even though the signal context is already cancelled, but must not hang forever on a dead etcd.
const cleanupTimeout = 10 * time.Second

var outMu sync.Mutex

// emit prints one stdout line with a single write, so lines from concurrent goroutines never interleave and
// the reading test sees each line the moment it is printed.
func emit(format string, args ...interface{}) {
	line := fmt.Sprintf(format, args...) + "\n"
	outMu.Lock()
	defer outMu.Unlock()
	_, _ = os.Stdout.WriteString(line)
}

func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcdlock-go-interop: "+format+"\n", args...)
}

// usageError marks a bad command line (exit 2) as opposed to a failure talking to etcd (exit 1).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func main() {
	if len(os.Args) < 2 {
		logf("missing subcommand (elect | observe | leader | rwlock | electbench)")
		os.Exit(exitUsage)
	}
	cmds := map[string]func([]string) int{
		"elect":      runElect,
		"observe":    runObserve,
		"leader":     runLeader,
		"rwlock":     runRWLock,
		"electbench": runElectBench,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		logf("unknown subcommand %q (elect | observe | leader | rwlock | electbench)", os.Args[1])
		os.Exit(exitUsage)
	}
	os.Exit(run(os.Args[2:]))
}

// ---- command line -----------------------------------------------------------------------------------------

type common struct {
	endpoints string
	ttl       int
}

func newFlagSet(name string) (*flag.FlagSet, *common) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	c := &common{}
	fs.StringVar(&c.endpoints, "endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
	fs.IntVar(&c.ttl, "ttl", 10, "session (lease) TTL in seconds")
	return fs, c
}

// parse returns a usage error for anything that is not a well-formed command line, so every subcommand exits
// 2 for it; -h/--help prints the flags and counts as success.
func parse(fs *flag.FlagSet, c *common, args []string) (helped bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return false, usageError{fmt.Sprintf("unexpected arguments: %q", fs.Args())}
	}
	if c.ttl < 1 {
		return false, usageError{"--ttl must be >= 1"}
	}
	if len(c.endpointList()) == 0 {
		return false, usageError{"--endpoints is empty"}
	}
	return false, nil
}

func (c *common) endpointList() []string {
	var eps []string
	for _, e := range strings.Split(c.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

func require(name, value string) error {
	if value == "" {
		return usageError{"--" + name + " is required"}
	}
	return nil
}

// exitFor maps an error to the exit status: none (e.g. after -h) 0, a usage error 2, anything else 1.
func exitFor(err error) int {
	if err == nil {
		return exitOK
	}
	var u usageError
	if errors.As(err, &u) {
		logf("%s", u.msg)
		return exitUsage
	}
	logf("%v", err)
	return exitError
}

// ---- connection --------------------------------------------------------------------------------------------

func dial(c *common) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: c.endpointList(), DialTimeout: 5 * time.Second})
}

// conn is one client with one session (one lease), as every recipe here needs.
type conn struct {
	cli  *clientv3.Client
	sess *concurrency.Session
}

func connect(c *common) (*conn, error) {
	cli, err := dial(c)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	// The session keeps the client's own context (not the signal context): a signal must not stop the
	// keepalive before we have resigned/unlocked; close() then revokes the lease explicitly.
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(c.ttl))
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("session: %w", err)
	}
	return &conn{cli: cli, sess: sess}, nil
}

// close revokes the session's lease (deleting any key still on it, e.g. a waiter's queue key) and closes the
// client. Errors are reported but do not change the exit status: the lease expires on its own anyway.
func (c *conn) close() {
	if err := c.sess.Close(); err != nil {
		logf("revoking the session lease: %v", err)
	}
	c.cli.Close()
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

func cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), cleanupTimeout)
}

// hold waits holdMs milliseconds, or (holdMs < 0) until a signal. It reports whether a signal arrived and
// fails if the session's lease stopped being kept alive: the recipe's key (so the lock or leadership) may be
// gone, and going on would turn into false violations.
func hold(ctx context.Context, sess *concurrency.Session, holdMs int) (signalled bool, err error) {
	var timer <-chan time.Time
	if holdMs >= 0 {
		t := time.NewTimer(time.Duration(holdMs) * time.Millisecond)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-timer:
		return false, nil
	case <-ctx.Done():
		return true, nil
	case <-sess.Done():
		return false, errors.New("session lost: its lease is no longer kept alive")
	}
}

// ---- occupancy check ---------------------------------------------------------------------------------------
//
// Independent evidence of exclusion, in keys under PREFIX (etcdlock's Python side implements the same
// protocol, so processes of both languages check each other):
//   exclusive enter: Txn If(version(P+"writer") == 0) Then put(P+"writer", id), count(P+"readers/")
//                    -> violation if the If failed or the count > 0
//   exclusive exit:  Txn If(value(P+"writer") == id) Then delete(P+"writer") -> violation if it failed
//   shared enter:    Txn If(version(P+"writer") == 0) Then put(P+"readers/"+id) -> violation if it failed
//   shared exit:     delete(P+"readers/"+id)
// The check keys carry no lease on purpose: a holder that dies inside leaves them, and the next holder then
// reports it.

type checker struct {
	cli        *clientv3.Client
	prefix     string
	violations int
}

func (c *checker) violation(format string, args ...interface{}) {
	c.violations++
	emit("VIOLATION "+format, args...)
}

func (c *checker) enterExclusive(id string) error {
	if c.prefix == "" {
		return nil
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	w := c.prefix + "writer"
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(w), "=", 0)).
		Then(clientv3.OpPut(w, id), clientv3.OpGet(c.prefix+"readers/", clientv3.WithPrefix(), clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("occupancy check (exclusive enter): %w", err)
	}
	if !resp.Succeeded {
		c.violation("exclusive-enter id=%s writer-present", id)
	} else if n := resp.Responses[1].GetResponseRange().Count; n > 0 {
		c.violation("exclusive-enter id=%s readers=%d", id, n)
	}
	return nil
}

func (c *checker) exitExclusive(id string) error {
	if c.prefix == "" {
		return nil
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	w := c.prefix + "writer"
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(w), "=", id)).
		Then(clientv3.OpDelete(w)).
		Commit()
	if err != nil {
		return fmt.Errorf("occupancy check (exclusive exit): %w", err)
	}
	if !resp.Succeeded {
		c.violation("exclusive-exit id=%s writer-not-ours", id)
	}
	return nil
}

func (c *checker) enterShared(id string) error {
	if c.prefix == "" {
		return nil
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(c.prefix+"writer"), "=", 0)).
		Then(clientv3.OpPut(c.prefix+"readers/"+id, "")).
		Commit()
	if err != nil {
		return fmt.Errorf("occupancy check (shared enter): %w", err)
	}
	if !resp.Succeeded {
		c.violation("shared-enter id=%s writer-present", id)
	}
	return nil
}

func (c *checker) exitShared(id string) error {
	if c.prefix == "" {
		return nil
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	if _, err := c.cli.Delete(ctx, c.prefix+"readers/"+id); err != nil {
		return fmt.Errorf("occupancy check (shared exit): %w", err)
	}
	return nil
}

func holderID(round int) string { return fmt.Sprintf("go-%d-%d", os.Getpid(), round) }

// ---- elect -------------------------------------------------------------------------------------------------

func runElect(args []string) int {
	fs, c := newFlagSet("elect")
	name := fs.String("name", "", "election name (keys NAME/<lease hex>)")
	proposal := fs.String("proposal", "", "value to campaign with")
	rounds := fs.Int("rounds", 0, "campaign/resign rounds; 0 = lead once until SIGTERM/SIGINT")
	holdMs := fs.Int("hold-ms", 0, "milliseconds to stay leader per round (rounds > 0)")
	check := fs.String("check", "", "occupancy-check key prefix (empty: no check)")
	proclaim := fs.String("proclaim", "", "value to Proclaim once leader (empty: none)")
	if helped, err := parse(fs, c, args); helped || err != nil {
		return exitFor(err)
	}
	for flagName, v := range map[string]string{"name": *name, "proposal": *proposal} {
		if err := require(flagName, v); err != nil {
			return exitFor(err)
		}
	}
	if *rounds < 0 || *holdMs < 0 {
		return exitFor(usageError{"--rounds and --hold-ms must be >= 0"})
	}

	ctx, stop := signalContext()
	defer stop()
	cn, err := connect(c)
	if err != nil {
		return exitFor(err)
	}
	chk := &checker{cli: cn.cli, prefix: *check}
	e := concurrency.NewElection(cn.sess, *name)
	runErr := electRounds(ctx, cn, e, chk, *rounds, *holdMs, *proposal, *proclaim)
	cn.close()
	emit("VIOLATIONS %d", chk.violations)
	if runErr != nil {
		logf("%v", runErr)
		return exitError
	}
	return exitOK
}

func electRounds(
	ctx context.Context, cn *conn, e *concurrency.Election, chk *checker,
	rounds, holdMs int, proposal, proclaim string,
) error {
	for round := 1; rounds == 0 || round <= rounds; round++ {
		if ctx.Err() != nil {
			return nil
		}
		if err := e.Campaign(ctx, proposal); err != nil {
			if ctx.Err() != nil {
				// Signalled while waiting: Campaign already deleted our key; closing the session does the rest.
				return nil
			}
			return fmt.Errorf("campaign: %w", err)
		}
		emit("LEADER %s %d", e.Key(), e.Rev())
		termErr := leaderTerm(ctx, cn, e, chk, round, rounds, holdMs, proclaim)
		rctx, cancel := cleanupContext()
		err := e.Resign(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("resign: %w", err)
		}
		emit("RESIGNED")
		if termErr != nil {
			return termErr
		}
	}
	return nil
}

// leaderTerm is what a leader does between winning and resigning: proclaim, enter the check, hold, leave it.
func leaderTerm(
	ctx context.Context, cn *conn, e *concurrency.Election, chk *checker,
	round, rounds, holdMs int, proclaim string,
) error {
	if proclaim != "" {
		pctx, cancel := cleanupContext()
		err := e.Proclaim(pctx, proclaim)
		cancel()
		if err != nil {
			return fmt.Errorf("proclaim: %w", err)
		}
		emit("PROCLAIMED %s", proclaim)
	}
	id := holderID(round)
	if err := chk.enterExclusive(id); err != nil {
		return err
	}
	wait := holdMs
	if rounds == 0 {
		wait = -1 // until a signal
	}
	_, holdErr := hold(ctx, cn.sess, wait)
	if err := chk.exitExclusive(id); err != nil {
		return err
	}
	return holdErr
}

// ---- observe / leader ---------------------------------------------------------------------------------------

func runObserve(args []string) int {
	fs, c := newFlagSet("observe")
	name := fs.String("name", "", "election name")
	count := fs.Int("count", 0, "stop after this many observations; 0 = until SIGTERM/SIGINT")
	if helped, err := parse(fs, c, args); helped || err != nil {
		return exitFor(err)
	}
	if err := require("name", *name); err != nil {
		return exitFor(err)
	}
	if *count < 0 {
		return exitFor(usageError{"--count must be >= 0"})
	}
	ctx, stop := signalContext()
	defer stop()
	cn, err := connect(c)
	if err != nil {
		return exitFor(err)
	}
	defer cn.close()
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen := 0
	for resp := range concurrency.NewElection(cn.sess, *name).Observe(octx) {
		emit("OBSERVED %s", resp.Kvs[0].Value)
		seen++
		if *count > 0 && seen >= *count {
			return exitOK
		}
	}
	if ctx.Err() != nil {
		return exitOK
	}
	// Observe closes its channel on its own only when its watch broke.
	logf("observe: the channel closed (watch disrupted)")
	return exitError
}

func runLeader(args []string) int {
	fs, c := newFlagSet("leader")
	name := fs.String("name", "", "election name")
	if helped, err := parse(fs, c, args); helped || err != nil {
		return exitFor(err)
	}
	if err := require("name", *name); err != nil {
		return exitFor(err)
	}
	ctx, stop := signalContext()
	defer stop()
	cn, err := connect(c)
	if err != nil {
		return exitFor(err)
	}
	defer cn.close()
	resp, err := concurrency.NewElection(cn.sess, *name).Leader(ctx)
	switch {
	case errors.Is(err, concurrency.ErrElectionNoLeader):
		emit("NOLEADER")
	case err != nil:
		logf("leader: %v", err)
		return exitError
	default:
		emit("LEADER %s", resp.Kvs[0].Value)
	}
	return exitOK
}

// ---- rwlock ------------------------------------------------------------------------------------------------

func runRWLock(args []string) int {
	fs, c := newFlagSet("rwlock")
	name := fs.String("name", "", "lock name (keys NAME/read/<ns>, NAME/write/<ns>)")
	mode := fs.String("mode", "", "read | write")
	rounds := fs.Int("rounds", 0, "lock/unlock rounds; 0 = hold once until SIGTERM/SIGINT")
	holdMs := fs.Int("hold-ms", 0, "milliseconds to hold per round (rounds > 0)")
	check := fs.String("check", "", "occupancy-check key prefix (empty: no check)")
	if helped, err := parse(fs, c, args); helped || err != nil {
		return exitFor(err)
	}
	if err := require("name", *name); err != nil {
		return exitFor(err)
	}
	if *mode != "read" && *mode != "write" {
		return exitFor(usageError{"--mode must be read or write"})
	}
	if *rounds < 0 || *holdMs < 0 {
		return exitFor(usageError{"--rounds and --hold-ms must be >= 0"})
	}
	ctx, stop := signalContext()
	defer stop()
	cn, err := connect(c)
	if err != nil {
		return exitFor(err)
	}
	chk := &checker{cli: cn.cli, prefix: *check}
	runErr := rwRounds(ctx, cn, recipe.NewRWMutex(cn.sess, *name), chk, *mode, *rounds, *holdMs)
	cn.close()
	emit("VIOLATIONS %d", chk.violations)
	if runErr != nil {
		logf("%v", runErr)
		return exitError
	}
	return exitOK
}

// acquire runs RLock/Lock, which take no context, in a goroutine so a signal can interrupt the wait. On a
// signal the goroutine is abandoned: closing the session revokes the lease, deleting our queued key, and the
// process exits right after.
func acquire(ctx context.Context, rw *recipe.RWMutex, mode string) (got bool, err error) {
	done := make(chan error, 1)
	go func() {
		if mode == "read" {
			done <- rw.RLock()
		} else {
			done <- rw.Lock()
		}
	}()
	select {
	case err := <-done:
		return err == nil, err
	case <-ctx.Done():
		return false, nil
	}
}

func rwRounds(ctx context.Context, cn *conn, rw *recipe.RWMutex, chk *checker, mode string, rounds, holdMs int) error {
	enter, exit := chk.enterExclusive, chk.exitExclusive
	unlock := rw.Unlock
	if mode == "read" {
		enter, exit = chk.enterShared, chk.exitShared
		unlock = rw.RUnlock
	}
	for round := 1; rounds == 0 || round <= rounds; round++ {
		if ctx.Err() != nil {
			return nil
		}
		got, err := acquire(ctx, rw, mode)
		if err != nil {
			return fmt.Errorf("%s lock: %w", mode, err)
		}
		if !got {
			return nil // signalled while waiting
		}
		emit("ACQUIRED %s", mode)
		id := holderID(round)
		termErr := enter(id)
		if termErr == nil {
			wait := holdMs
			if rounds == 0 {
				wait = -1
			}
			_, termErr = hold(ctx, cn.sess, wait)
			if err := exit(id); err != nil && termErr == nil {
				termErr = err
			}
		}
		if err := unlock(); err != nil {
			return fmt.Errorf("%s unlock: %w", mode, err)
		}
		emit("RELEASED %s", mode)
		if termErr != nil {
			return termErr
		}
	}
	return nil
}

// ---- electbench --------------------------------------------------------------------------------------------

type benchResult struct {
	Mode      string  `json:"mode"`
	Handovers int     `json:"handovers"`
	Seconds   float64 `json:"seconds"`
	OpsPerS   float64 `json:"ops_per_s"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	Workers   int     `json:"workers"`
	Errors    int     `json:"errors"`
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p)]
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000.0 }

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func runElectBench(args []string) int {
	fs, c := newFlagSet("electbench")
	name := fs.String("name", "", "election name all workers contend on")
	workers := fs.Int("workers", 0, "goroutines, each with its own client, session and Election")
	durS := fs.Float64("duration-s", 0, "measurement duration in seconds")
	if helped, err := parse(fs, c, args); helped || err != nil {
		return exitFor(err)
	}
	if err := require("name", *name); err != nil {
		return exitFor(err)
	}
	if *workers < 1 || *durS <= 0 {
		return exitFor(usageError{"--workers must be >= 1 and --duration-s > 0"})
	}
	sigCtx, stop := signalContext()
	defer stop()

	// Connections and sessions are made before the clock starts: the benchmark measures hand-overs only.
	conns := make([]*conn, 0, *workers)
	defer func() {
		for _, cn := range conns {
			cn.close()
		}
	}()
	for i := 0; i < *workers; i++ {
		cn, err := connect(c)
		if err != nil {
			logf("%v", err)
			return exitError
		}
		conns = append(conns, cn)
	}

	deadline := time.Now().Add(time.Duration(*durS * float64(time.Second)))
	ctx, cancel := context.WithDeadline(sigCtx, deadline)
	defer cancel()
	// gRPC runs its own timer for the deadline and may fail a call a moment before ctx.Err() is set: an error
	// at or after the deadline is the end of the run, not a failure.
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(deadline) }
	lats := make([][]time.Duration, *workers)
	errs := make([]int, *workers)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, cn := range conns {
		wg.Add(1)
		go func(i int, cn *conn) {
			defer wg.Done()
			e := concurrency.NewElection(cn.sess, *name)
			val := fmt.Sprintf("bench-%d-%d", os.Getpid(), i)
			for !over() {
				start := time.Now()
				if err := e.Campaign(ctx, val); err != nil {
					if !over() {
						errs[i]++
						logf("worker %d: campaign: %v", i, err)
					}
					return // closing the session at the end withdraws a key Campaign may have left
				}
				lats[i] = append(lats[i], time.Since(start))
				rctx, rcancel := cleanupContext()
				err := e.Resign(rctx)
				rcancel()
				if err != nil {
					errs[i]++
					logf("worker %d: resign: %v", i, err)
					return
				}
			}
		}(i, cn)
	}
	wg.Wait()
	elapsed := time.Since(t0).Seconds()

	var all []time.Duration
	nerr := 0
	for i := range lats {
		all = append(all, lats[i]...)
		nerr += errs[i]
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	res := benchResult{
		Mode: "electbench", Handovers: len(all), Seconds: round3(elapsed),
		OpsPerS: round3(float64(len(all)) / elapsed),
		P50Ms:   millis(percentile(all, 0.50)), P99Ms: millis(percentile(all, 0.99)),
		Workers: *workers, Errors: nerr,
	}
	line, err := json.Marshal(res)
	if err != nil {
		logf("json: %v", err)
		return exitError
	}
	emit("%s", line)
	if nerr > 0 {
		return exitError
	}
	return exitOK
}
