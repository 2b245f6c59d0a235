/**
 * The channel end to end with real `ws` clients on 127.0.0.1: subscribe,
 * publish, authorisation, limits, heartbeat, run-time switch and shutdown.
 */
import { once } from 'node:events'
import WebSocket, { WebSocketServer } from 'ws'
import { MemoryBus } from '../lib/bus/memory'
import { CloseCode } from '../lib/protocol/protocol'
import type { Bus } from '../lib/types'
import { fixture, type Fixture } from './helpers/fixture'
import { handshake, rawRequest } from './helpers/net'

let f: Fixture
afterEach(async () => { await f.close() })

describe('subscribe and publish', () => {
  test('subscribers of a topic receive its events, once, in order; others receive nothing', async () => {
    f = await fixture()
    const [a, b, other] = [await f.connect(), await f.connect(), await f.connect()]
    expect(await a.subscribe('project:42')).toMatchObject({ op: 'subscribed', topic: 'project:42', cursor: expect.any(String) })
    await b.subscribe('project:42')
    await other.subscribe('project:7')
    await f.rt.publish('project:42', 'item-updated', { itemId: 7, by: 'anna' })
    await f.rt.publish('project:42', 'item-updated', { itemId: 8 })
    for (const c of [a, b]) {
      const e1 = await c.op('event')
      const e2 = await c.op('event')
      expect(e1).toEqual({ op: 'event', topic: 'project:42', id: expect.any(String), type: 'item-updated', data: { itemId: 7, by: 'anna' } })
      expect(e2.data).toEqual({ itemId: 8 })
      expect(e2.id).not.toBe(e1.id)
    }
    other.send({ op: 'ping' })
    expect(await other.next()).toEqual({ op: 'pong' }) // nothing of project:42 came before the pong
    expect(f.rt.stats()).toMatchObject({ connections: 3, subscriptions: 3, topics: 2, eventsPublished: 2 })
  })

  test('after unsubscribe no more events arrive', async () => {
    f = await fixture()
    const c = await f.connect()
    await c.subscribe('projects')
    c.send({ op: 'unsubscribe', topic: 'projects' })
    expect(await c.op('unsubscribed')).toEqual({ op: 'unsubscribed', topic: 'projects' })
    await f.rt.publish('projects', 'x', 1)
    c.send({ op: 'ping' })
    expect(await c.next()).toEqual({ op: 'pong' })
    expect(f.rt.stats().subscriptions).toBe(0)
  })

  test('subscribing twice is harmless and yields one copy of each event', async () => {
    f = await fixture()
    const c = await f.connect()
    await c.subscribe('projects')
    await c.subscribe('projects')
    await f.rt.publish('projects', 'x', 1)
    await c.op('event')
    c.send({ op: 'ping' })
    expect(await c.next()).toEqual({ op: 'pong' })
  })

  test('publish refuses bad topics, empty types and data JSON cannot carry', () => {
    f = { close: async () => {} } as Fixture
    return fixture().then((fx) => {
      f = fx
      expect(() => f.rt.publish('has space', 'x')).toThrow(TypeError)
      expect(() => f.rt.publish('ok', '')).toThrow(TypeError)
      expect(() => f.rt.publish('ok', 'x', { n: 1n })).toThrow(TypeError)
      expect(() => f.rt.publish('ok', 'x', () => 1)).toThrow(TypeError)
    })
  })
})

describe('recovery', () => {
  test('a client resubscribing with `since` gets exactly what it missed, then live events', async () => {
    f = await fixture()
    const c1 = await f.connect()
    const { cursor } = await c1.subscribe('project:1')
    await f.rt.publish('project:1', 'a', 1)
    const seen = await c1.op('event')
    c1.close()
    await f.rt.publish('project:1', 'b', 2)
    await f.rt.publish('project:1', 'c', 3)
    const c2 = await f.connect()
    expect(await c2.subscribe('project:1', seen.id as string)).toEqual({ op: 'subscribed', topic: 'project:1', recovered: true })
    expect((await c2.op('event')).data).toBe(2)
    expect((await c2.op('event')).data).toBe(3)
    await f.rt.publish('project:1', 'd', 4)
    expect((await c2.op('event')).data).toBe(4)
    // The cursor from `subscribed` (no event seen yet) recovers everything after it.
    const c3 = await f.connect()
    await c3.subscribe('project:1', cursor as string)
    expect([(await c3.op('event')).data, (await c3.op('event')).data, (await c3.op('event')).data, (await c3.op('event')).data]).toEqual([1, 2, 3, 4])
  })

  test('a cursor history cannot cover gets `resync`, then live events', async () => {
    f = await fixture()
    const c = await f.connect()
    c.send({ op: 'subscribe', topic: 'projects', since: 'not-ours-1' })
    expect(await c.next()).toEqual({ op: 'resync', topic: 'projects' })
    expect(await c.next()).toMatchObject({ op: 'subscribed', topic: 'projects', recovered: false })
    await f.rt.publish('projects', 'x', 1)
    expect((await c.op('event')).data).toBe(1)
  })
})

describe('the bus seam', () => {
  test('publish goes through the configured bus, even a subclass of the memory bus', async () => {
    const seen: string[] = []
    class AuditedBus extends MemoryBus {
      override publish(topic: string, type: string, data: string) {
        seen.push(`${topic} ${type}`)
        return super.publish(topic, type, data)
      }
    }
    const bus = new AuditedBus()
    f = await fixture({ bus })
    const c = await f.connect()
    await c.subscribe('projects')
    const published = await f.rt.publish('projects', 'audited', 1)
    expect(seen).toEqual(['projects audited'])
    expect(await c.op('event')).toMatchObject({ id: published.id, type: 'audited' })
    await bus.close()
  })

  test('an asynchronous bus works too: publish resolves with the cursor it assigned', async () => {
    const inner = new MemoryBus()
    const bus: Bus = {
      publish: (topic, type, data) => new Promise((resolve) => setTimeout(() => resolve(inner.publish(topic, type, data)), 5)),
      subscribe: (topic) => inner.subscribe(topic),
      unsubscribe: (topic) => inner.unsubscribe(topic),
      onEvent: (listener) => inner.onEvent(listener),
      history: (topic, since) => inner.history(topic, since),
      latest: () => inner.latest(),
      close: () => inner.close(),
    }
    f = await fixture({ bus })
    const c = await f.connect()
    await c.subscribe('projects')
    const published = await f.rt.publish('projects', 'later', 2)
    expect((await c.op('event')).id).toBe(published.id)
    await bus.close()
  })
})

describe('a bus that reports a hole in history', () => {
  class HoleyBus extends MemoryBus {
    report: (topic: string) => void = () => {}
    onResync(listener: (topic: string) => void): void { this.report = listener }
  }

  test('every local subscriber of that topic, WebSocket and SSE, is told to resync; others are not', async () => {
    const bus = new HoleyBus()
    f = await fixture({ bus })
    const [ws1, other] = [await f.connect(), await f.connect()]
    await ws1.subscribe('project:9')
    await other.subscribe('project:8')
    const ac = new AbortController()
    const sse = await fetch(`${f.srv.base}/realtime/events?topics=project:9`, { signal: ac.signal })
    const reader = sse.body!.getReader()
    await new Promise((r) => setTimeout(r, 50))
    bus.report('project:9')
    expect(await ws1.next()).toEqual({ op: 'resync', topic: 'project:9' })
    let text = ''
    while (!text.includes('resync')) text += new TextDecoder().decode((await reader.read()).value)
    expect(text).toMatch(/data: \{"op":"resync","topic":"project:9"\}/)
    other.send({ op: 'ping' })
    expect(await other.next()).toEqual({ op: 'pong' })
    ac.abort()
    await bus.close()
  })
})

describe('authorisation', () => {
  test('authorize() decides per topic; a refusal is an error frame, the socket stays open', async () => {
    f = await fixture({ authorize: async (_u, topic) => topic !== 'secret' })
    const c = await f.connect()
    expect(await c.subscribe('secret')).toMatchObject({ op: 'error', code: 'forbidden', topic: 'secret' })
    expect(await c.subscribe('projects')).toMatchObject({ op: 'subscribed' })
  })

  test('notifications:<id> is only for the user with that id by default', async () => {
    f = await fixture({ authenticate: (req) => ({ id: req.headers['x-user'] }) })
    const anna = await f.connect({ headers: { 'x-user': 'anna' } })
    expect(await anna.subscribe('notifications:anna')).toMatchObject({ op: 'subscribed' })
    expect(await anna.subscribe('notifications:bob')).toMatchObject({ op: 'error', code: 'forbidden' })
  })

  test('authenticate returning null refuses the handshake with 401', async () => {
    f = await fixture({ authenticate: () => null })
    await expect(f.connect()).rejects.toMatchObject({ status: 401 })
    expect(f.rt.stats().refusals.unauthenticated).toBe(1)
  })

  test('an authorize() that throws counts as a refusal, not a crash', async () => {
    f = await fixture({ authorize: () => { throw new Error('db down') } })
    const c = await f.connect()
    expect(await c.subscribe('projects')).toMatchObject({ op: 'error', code: 'forbidden' })
  })
})

describe('bad input', () => {
  test.each([
    ['malformed JSON', '{"op":', 'bad_request'],
    ['a JSON array', '[1]', 'bad_request'],
    ['a frame without op', '{"topic":"x"}', 'bad_request'],
    ['an unknown op', '{"op":"shout"}', 'unknown_op'],
    ['a bad topic', '{"op":"subscribe","topic":"a b"}', 'bad_request'],
    ['a non-string since', '{"op":"subscribe","topic":"a","since":5}', 'bad_request'],
  ])('%s gets an error frame (%s → %s) and the socket stays usable', async (_t, text, code) => {
    f = await fixture()
    const c = await f.connect()
    c.send(text)
    expect(await c.next()).toMatchObject({ op: 'error', code })
    expect(await c.subscribe('projects')).toMatchObject({ op: 'subscribed' })
  })

  test('binary frames get an error frame', async () => {
    f = await fixture()
    const c = await f.connect()
    c.ws.send(Buffer.from([1, 2, 3]))
    expect(await c.next()).toMatchObject({ op: 'error', code: 'bad_request' })
  })

  test('repeated protocol errors close the socket with 1008', async () => {
    f = await fixture({ maxProtocolErrors: 3 })
    const c = await f.connect()
    for (let i = 0; i < 3; i++) c.send('nope')
    expect(await c.closed()).toBe(CloseCode.POLICY)
  })

  test('a frame over maxPayload closes with 1009; other clients are unaffected', async () => {
    f = await fixture({ maxPayload: 1024 })
    const [big, ok] = [await f.connect(), await f.connect()]
    await ok.subscribe('projects')
    big.send({ op: 'subscribe', topic: 'x'.repeat(10), pad: 'y'.repeat(2000) })
    expect(await big.closed()).toBe(1009)
    await f.rt.publish('projects', 'x', 1)
    expect((await ok.op('event')).data).toBe(1)
  })

  test('more messages per second than allowed get rate_limited', async () => {
    f = await fixture({ maxMessagesPerSecond: 5, maxProtocolErrors: 100 })
    const c = await f.connect()
    for (let i = 0; i < 8; i++) c.send({ op: 'ping' })
    expect(await c.next((fr) => fr.op === 'error')).toMatchObject({ code: 'rate_limited' })
  })

  test('a connection holds at most maxTopicsPerConnection topics', async () => {
    f = await fixture({ maxTopicsPerConnection: 2 })
    const c = await f.connect()
    await c.subscribe('a')
    await c.subscribe('b')
    expect(await c.subscribe('c')).toMatchObject({ op: 'error', code: 'bad_request', topic: 'c' })
  })

  test('garbage bytes on the socket close that client (1002) and nothing else', async () => {
    f = await fixture()
    const [bad, ok] = [await f.connect(), await f.connect()]
    await ok.subscribe('projects')
    ;(bad.ws as unknown as { _socket: import('node:net').Socket })._socket.write(Buffer.from([0xff, 0xff, 0xff, 0xff]))
    await bad.closed()
    await f.rt.publish('projects', 'x', 1)
    expect((await ok.op('event')).data).toBe(1)
  })
})

describe('slow consumers and heartbeat', () => {
  test('a client that stops reading is closed once its buffer passes the bound; others get every event', async () => {
    // The bound leaves a reading client room to fall behind for a moment on a
    // loaded machine (client and server share this process's one thread); one
    // that never reads passes any bound within the 19 MB published here.
    f = await fixture({ maxBufferedBytes: 1024 * 1024 })
    const [slow, fast] = [await f.connect(), await f.connect()]
    await slow.subscribe('bulk')
    await fast.subscribe('bulk')
    slow.ws.pause() // stop reading: TCP backpressure builds up on the server
    const payload = 'x'.repeat(32 * 1024)
    let received = 0
    const all = new Promise<void>((resolve) => fast.ws.on('message', () => { if (++received === 600) resolve() }))
    for (let i = 0; i < 600; i++) {
      await f.rt.publish('bulk', 'row', payload)
      if (i % 50 === 0) await new Promise((r) => setImmediate(r)) // let sockets drain, as a real import would
    }
    // If the reading client does not get everything, say why rather than time out.
    const late = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(
      `the reading client got ${received}/600; ${f.rt.stats().slowConsumersClosed} closed as slow, fast is ${fast.ws.readyState === WebSocket.OPEN ? 'open' : 'closed'}`)), 10_000).unref())
    await Promise.race([all, late])
    expect(f.rt.stats().slowConsumersClosed).toBe(1)
    slow.ws.resume()
    expect(await slow.closed()).toBe(CloseCode.TRY_AGAIN_LATER)
    expect(received).toBe(600)
    await new Promise((r) => setTimeout(r, 50))
    expect(f.rt.stats().connections).toBe(1)
  })

  test('the server pings; a peer that stops answering is terminated, a live one stays', async () => {
    f = await fixture({ heartbeatMs: 100 })
    const [silent, live] = [await f.connect(), await f.connect()]
    silent.ws.pause() // no reads → no pongs
    await new Promise((r) => setTimeout(r, 450))
    expect(f.rt.stats().connections).toBe(1)
    expect(live.ws.readyState).toBe(WebSocket.OPEN)
  })

  test('{"op":"ping"} is answered with pong', async () => {
    f = await fixture()
    const c = await f.connect()
    c.send({ op: 'ping' })
    expect(await c.next()).toEqual({ op: 'pong' })
  })
})

describe('run-time switch and shutdown', () => {
  test('switching off closes open sockets with 4000 and refuses new ones; switching on accepts again', async () => {
    f = await fixture()
    const c = await f.connect()
    f.rt.webSocketEnabled = false
    expect(await c.closed()).toBe(CloseCode.DISABLED)
    await expect(f.connect()).rejects.toMatchObject({ status: 503 })
    const cfg = await fetch(`${f.srv.base}/realtime/config`).then((r) => r.json())
    expect(cfg).toMatchObject({ webSocketEnabled: false, mode: 'manual-refresh' })
    f.rt.webSocketEnabled = true
    await expect(f.connect()).resolves.toBeDefined()
    expect(f.rt.stats().webSocketEnabled).toBe(true)
  })

  test('close() sends 1001 to every client and removes its upgrade listener', async () => {
    f = await fixture()
    const [a, b] = [await f.connect(), await f.connect()]
    const listeners = f.srv.server.listenerCount('upgrade')
    await f.rt.close()
    expect([await a.closed(), await b.closed()]).toEqual([1001, 1001])
    expect(f.srv.server.listenerCount('upgrade')).toBe(listeners - 1)
    expect(f.rt.stats().connections).toBe(0)
  })
})

describe('sharing the HTTP server', () => {
  test('another ws server on another path keeps working, and ours too', async () => {
    f = await fixture()
    const other = new WebSocketServer({ noServer: true })
    other.on('connection', (ws) => ws.send('hello from the other app'))
    f.srv.server.on('upgrade', (req, socket, head) => {
      if (req.url === '/hmr') other.handleUpgrade(req, socket, head, (ws) => other.emit('connection', ws, req))
    })
    const ws = new WebSocket(`ws://127.0.0.1:${f.srv.port}/hmr`)
    const [msg] = await once(ws, 'message')
    expect(String(msg)).toBe('hello from the other app')
    ws.close()
    other.close()
    await expect(f.connect()).resolves.toBeDefined()
  })

  test('an upgrade nobody claims gets 404 after unclaimedUpgradeTimeoutMs when other listeners exist', async () => {
    f = await fixture({ unclaimedUpgradeTimeoutMs: 200 })
    f.srv.server.on('upgrade', () => { /* a listener that ignores this path */ })
    const started = Date.now()
    const res = await rawRequest(f.srv.port, handshake(f.srv.port, '/nobody'), 3000)
    expect(res.status).toBe(404)
    expect(Date.now() - started).toBeGreaterThanOrEqual(150)
  })
})
