package cerberus

// The socket client: a fixed pool of long-lived connections to the daemon. Each
// connection has one writer goroutine, which sends everything queued since its last
// write in one write (so concurrent callers are coalesced), and one reader goroutine,
// which hands every answer to its caller by id. Any number of callers share a
// connection; calls are spread over the pool round-robin. Connections are dialed on
// first use, and dialed again after they break (daemon restart, idle close).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Client errors. A call fails with one of these (possibly wrapped) or a *ServerError.
var (
	// ErrConnect: the daemon's socket could not be dialed.
	ErrConnect = errors.New("cerberus: cannot connect to the daemon")
	// ErrTimeout: no answer within the client's timeout.
	ErrTimeout = errors.New("cerberus: lookup timed out")
	// ErrBroken: the connection broke under the call, and again on the retry.
	ErrBroken = errors.New("cerberus: connection to the daemon broke")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("cerberus: client closed")
)

// ServerError is an error frame the daemon sent for one request.
type ServerError struct {
	Code    ErrorCode
	Message string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("cerberus daemon error %s: %s", e.Code, e.Message)
}

// writeTimeout bounds one write: a daemon that does not read its socket for that
// long gets the connection closed (and redialed by the next call).
const writeTimeout = time.Second

// queueLen is how many calls may wait for a connection's writer.
const queueLen = 256

// Client is a pool of pipelined connections to one daemon socket. It is safe for
// concurrent use. The zero value is not usable: call NewClient.
type Client struct {
	socket  string
	timeout time.Duration
	slots   []slot
	next    atomic.Uint32 // round-robin position
	ids     atomic.Uint32 // last request id
	closed  atomic.Bool
}

type slot struct {
	mu   sync.Mutex
	conn *conn
}

// NewClient prepares a client with `connections` connections (at least 1) and a
// timeout per call. It does not dial: the first call on each connection does.
func NewClient(socket string, connections int, timeout time.Duration) *Client {
	if connections < 1 {
		connections = 1
	}
	return &Client{socket: socket, timeout: timeout, slots: make([]slot, connections)}
}

// Close closes every connection; calls in flight fail with ErrBroken or ErrClosed.
// It is safe to call more than once.
func (c *Client) Close() error {
	c.closed.Store(true)
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		if s.conn != nil {
			s.conn.fail(ErrClosed)
			s.conn = nil
		}
		s.mu.Unlock()
	}
	return nil
}

// Lookup asks the daemon what to do with addr. The call gives up after the client's
// timeout or when ctx ends, whichever comes first. A connection that breaks under
// the call is replaced and the request sent again, once.
func (c *Client) Lookup(ctx context.Context, addr netip.Addr) (Answer, error) {
	resp, err := c.call(ctx, func(id uint32, b []byte) []byte { return AppendLookup(b, id, addr) })
	if err != nil {
		return Answer{}, err
	}
	if resp.Kind != KindLookupAnswer {
		return Answer{}, fmt.Errorf("cerberus: unexpected answer kind 0x%02x to a lookup", resp.Kind)
	}
	return resp.Answer, nil
}

// Ping checks that the daemon answers.
func (c *Client) Ping(ctx context.Context) error {
	resp, err := c.call(ctx, func(id uint32, b []byte) []byte { return AppendPing(b, id) })
	if err == nil && resp.Kind != KindPong {
		err = fmt.Errorf("cerberus: unexpected answer kind 0x%02x to a ping", resp.Kind)
	}
	return err
}

func (c *Client) call(ctx context.Context, encode func(uint32, []byte) []byte) (Response, error) {
	if c.closed.Load() {
		return Response{}, ErrClosed
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	s := &c.slots[int(c.next.Add(1)-1)%len(c.slots)]
	var last error
	for attempt := 0; attempt < 2; attempt++ {
		cn, err := c.conn(ctx, s)
		if err != nil {
			return Response{}, err
		}
		id := c.ids.Add(1)
		if id == 0 { // id 0 is for connection-level errors
			id = c.ids.Add(1)
		}
		resp, err := cn.roundTrip(ctx, id, encode(id, make([]byte, 0, 32)))
		if !errors.Is(err, errConnBroken) {
			return resp, err
		}
		last = err
		if c.closed.Load() {
			return Response{}, ErrClosed
		}
	}
	return Response{}, fmt.Errorf("%w: %w", ErrBroken, last)
}

// conn returns the slot's live connection, dialing a new one if needed.
func (c *Client) conn(ctx context.Context, s *slot) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.isDead() {
		return s.conn, nil
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrConnect, err)
	}
	s.conn = newConn(nc)
	return s.conn, nil
}

// errConnBroken marks a call whose connection failed: the caller may retry.
var errConnBroken = errors.New("connection failed")

type pending struct {
	id    uint32
	frame []byte
	done  chan result // buffered: the reader never blocks on it
}

type result struct {
	resp Response
	err  error
}

// conn is one connection with its writer and reader goroutines.
type conn struct {
	nc    net.Conn
	queue chan *pending
	dead  chan struct{} // closed by fail

	mu      sync.Mutex
	waiting map[uint32]*pending
	err     error // why the connection failed, nil while alive
}

func newConn(nc net.Conn) *conn {
	cn := &conn{
		nc:      nc,
		queue:   make(chan *pending, queueLen),
		dead:    make(chan struct{}),
		waiting: make(map[uint32]*pending),
	}
	go cn.writeLoop()
	go cn.readLoop()
	return cn
}

func (cn *conn) isDead() bool {
	select {
	case <-cn.dead:
		return true
	default:
		return false
	}
}

// fail closes the connection and fails every waiting call with errConnBroken.
func (cn *conn) fail(cause error) {
	cn.mu.Lock()
	if cn.err != nil {
		cn.mu.Unlock()
		return
	}
	cn.err = cause
	waiting := cn.waiting
	cn.waiting = nil
	close(cn.dead)
	cn.mu.Unlock()
	_ = cn.nc.Close()
	for _, p := range waiting {
		p.done <- result{err: fmt.Errorf("%w: %w", errConnBroken, cause)}
	}
}

// roundTrip sends one request and waits for its answer, ctx's end or the
// connection's failure.
func (cn *conn) roundTrip(ctx context.Context, id uint32, frame []byte) (Response, error) {
	p := &pending{id: id, frame: frame, done: make(chan result, 1)}
	cn.mu.Lock()
	if cn.err != nil {
		err := cn.err
		cn.mu.Unlock()
		return Response{}, fmt.Errorf("%w: %w", errConnBroken, err)
	}
	cn.waiting[id] = p
	cn.mu.Unlock()

	select {
	case cn.queue <- p:
	case <-cn.dead: // fail has answered p
	case <-ctx.Done():
		cn.forget(id)
		return Response{}, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
	select {
	case r := <-p.done:
		return r.resp, r.err
	case <-ctx.Done():
		// Keep the connection; the late answer is dropped by its id.
		cn.forget(id)
		return Response{}, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
}

func (cn *conn) forget(id uint32) {
	cn.mu.Lock()
	delete(cn.waiting, id)
	cn.mu.Unlock()
}

// writeLoop sends queued requests, everything queued at the time in one write.
func (cn *conn) writeLoop() {
	buf := make([]byte, 0, 4096)
	for {
		var p *pending
		select {
		case p = <-cn.queue:
		case <-cn.dead:
			return
		}
		buf = append(buf[:0], p.frame...)
		if len(cn.queue) == 0 {
			// Let callers that are about to queue do so: one write for all of
			// them costs far less than one each.
			runtime.Gosched()
		}
	drain:
		for len(buf) < 16*1024 {
			select {
			case p = <-cn.queue:
				buf = append(buf, p.frame...)
			default:
				break drain
			}
		}
		_ = cn.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := cn.nc.Write(buf); err != nil {
			cn.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

// readLoop decodes answers and hands each to its caller by id. A late answer (its
// caller timed out) is dropped.
func (cn *conn) readLoop() {
	buf := make([]byte, 0, 8192)
	for {
		if cap(buf)-len(buf) < MaxFrameSize {
			buf = append(make([]byte, 0, 8192), buf...)
		}
		n, err := cn.nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		off := 0
		for {
			resp, used, derr := DecodeResponse(buf[off:])
			if errors.Is(derr, ErrIncomplete) {
				break
			}
			if derr != nil {
				cn.fail(fmt.Errorf("bad answer from the daemon: %w", derr))
				return
			}
			off += used
			if resp.Kind == KindError && resp.ID == 0 {
				cn.fail(&ServerError{Code: resp.Code, Message: resp.Message})
				return
			}
			cn.deliver(resp)
		}
		buf = buf[:copy(buf, buf[off:])]
		if err != nil {
			cn.fail(fmt.Errorf("read: %w", err))
			return
		}
	}
}

func (cn *conn) deliver(resp Response) {
	cn.mu.Lock()
	p := cn.waiting[resp.ID]
	delete(cn.waiting, resp.ID)
	cn.mu.Unlock()
	if p == nil {
		return
	}
	if resp.Kind == KindError {
		p.done <- result{err: &ServerError{Code: resp.Code, Message: resp.Message}}
		return
	}
	p.done <- result{resp: resp}
}
