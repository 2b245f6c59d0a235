/**
 * Bounded fuzzing (issue #8): hundreds of generated hostile handshakes over
 * raw TCP and thousands of malformed frames from signed-in clients, against
 * the Koa demo (whose upgrades go through the app: the old crash site).
 * Each handshake must get a complete HTTP answer or a timely close; frames
 * get `error` frames or a documented close code; a bystander keeps receiving
 * every event in order; afterwards the process holds no more sockets, fds
 * or timers than before. Seeded, so a failure reproduces: FUZZ_SEED=n.
 */
import { readdirSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { connect as netConnect } from 'node:net'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import WebSocket from 'ws'
import { createApp } from '../../examples/koa-cms/app'
import type { KoaRealtime } from 'cms-realtime/koa'
import { connect, handshake, rawRequest, type TestClient } from '../helpers/net'

const SEED = Number(process.env.FUZZ_SEED ?? 20261124)
const HANDSHAKES = Number(process.env.FUZZ_HANDSHAKES ?? 400)
const FRAMES = Number(process.env.FUZZ_FRAMES ?? 5000)
jest.setTimeout(90_000)

/** mulberry32: small, seedable, good enough to pick mutations. */
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

let server: Server
let rt: KoaRealtime
let port: number
const fds = () => readdirSync('/proc/self/fd').length
const handles = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length

beforeAll(async () => {
  const demo = createApp({ handshakeTimeoutMs: 300, unclaimedUpgradeTimeoutMs: 300, heartbeatMs: 60_000 })
  rt = demo.rt
  // The app's own server bounds half-sent requests (Node's headersTimeout), checked often here.
  server = createServer({ headersTimeout: 1000, requestTimeout: 2000, connectionsCheckingInterval: 200 }, demo.app.callback())
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  port = (server.address() as AddressInfo).port
  rt.attach(server)
})
afterAll(async () => {
  await rt.close(200)
  server.closeAllConnections()
  await new Promise((r) => server.close(r))
})

// ---- handshakes ---------------------------------------------------------------

type Mutation = (r: () => number, lines: string[], p: number) => string[]
const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!
const header = (lines: string[], name: string) => lines.findIndex((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
const drop = (name: string): Mutation => (_r, lines) => lines.filter((_l, i) => i !== header(lines, name))
const set = (name: string, values: readonly string[]): Mutation => (r, lines) => {
  const i = header(lines, name)
  const line = `${name}: ${pick(r, values)}`
  return i < 0 ? [...lines, line] : lines.map((l, k) => (k === i ? line : l))
}

const MUTATIONS: readonly Mutation[] = [
  (r, [first, ...rest]) => [first!.replace(/^GET/, pick(r, ['POST', 'PUT', 'HEAD', 'OPTIONS', 'CONNECT', 'BREW', 'get'])), ...rest],
  (r, [first, ...rest]) => [first!.replace(/HTTP\/1\.1$/, pick(r, ['HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1x', 'HTTP/0.9', ''])), ...rest],
  (r, [first, ...rest]) => [first!.replace(' /realtime ', ` ${pick(r, ['/realtime/', '/realtime/config', '/other', '/%zz', '/realtime?nonce=short', `/realtime?${'a'.repeat(9000)}`, '*', '/realtime#x'])} `), ...rest],
  drop('Upgrade'), drop('Connection'), drop('Sec-WebSocket-Key'), drop('Sec-WebSocket-Version'), drop('Host'),
  set('Upgrade', ['WebSocket', 'websocket, h2c', 'h2c', '', 'websocket\t']),
  set('Connection', ['keep-alive', 'Upgrade, keep-alive', 'close, upgrade', 'upgrade,,', '']),
  set('Sec-WebSocket-Version', ['8', '13, 8', '', '13 ', '99999999999999999999']),
  set('Sec-WebSocket-Key', ['', 'short', 'dGhlIHNhbXBsZSBub25jZQ', '!!!!!!!!!!!!!!!!!!!!!!==', 'x'.repeat(500)]),
  set('Sec-WebSocket-Protocol', ['cms-realtime.v1,,', 'cms-realtime.v1, cms-realtime.v1', 'chat', ' , ', 'cms-realtime.v1, a b', 'cms-realtime.v1']),
  set('Origin', ['null', 'http://evil.example', 'not a url', 'http://127.0.0.1:1', '']),
  set('Sec-WebSocket-Extensions', ['permessage-deflate; client_max_window_bits', 'x; y=', ',,,']),
  (_r, lines) => [...lines, 'Host: evil.example'],
  (_r, lines) => [...lines, 'Sec-WebSocket-Protocol: cms-realtime.v1'],
  (_r, lines) => [...lines, `X-Big: ${'b'.repeat(20_000)}`],
  (_r, lines) => [...lines, ...Array.from({ length: 150 }, (_x, i) => `X-H${i}: ${i}`)],
  (_r, lines) => [...lines, 'Bad Header: value', 'X-Ctl: a\u0001b'],
  (_r, lines) => [...lines, 'Content-Length: 5', 'Transfer-Encoding: chunked'],
  (_r, lines, p) => [`GET /realtime/config HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\n\r\n${lines[0]!}`, ...lines.slice(1)],
  (_r, lines, p) => [`GET /api/projects HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\n\r\n${lines[0]!}`, ...lines.slice(1)],
  (_r, lines, p) => [`GET /realtime/events?topics=projects HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\n\r\n${lines[0]!}`, ...lines.slice(1)],
]

interface Outcome { kind: 'answered' | 'upgraded' | 'closed' | 'hung'; status?: number }

/** Send `text` (maybe split in chunks, maybe cut short) and classify what came back. */
function exchange(text: string, r: () => number, cut: boolean): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1')
    let buf = Buffer.alloc(0)
    let done = false
    const finish = (o: Outcome) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resolve(o)
    }
    // A timely close: well inside headersTimeout + its check interval, handshakeTimeoutMs, unclaimedUpgradeTimeoutMs.
    const timer = setTimeout(() => finish({ kind: 'hung' }), 4000)
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      const s = buf.toString('latin1')
      const end = s.indexOf('\r\n\r\n')
      if (end < 0) return
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(s)?.[1] ?? 0)
      if (status === 101) return finish({ kind: 'upgraded', status })
      const len = /\r\ncontent-length: *(\d+)/i.exec(s.slice(0, end))
      if (len !== null && buf.length - (end + 4) >= Number(len[1])) return finish({ kind: 'answered', status })
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      const s = buf.toString('latin1')
      finish(s.startsWith('HTTP/') ? { kind: 'answered', status: Number(s.slice(9, 12)) } : { kind: 'closed' })
    })
    const bytes = Buffer.from(cut ? text.slice(0, Math.floor(r() * text.length)) : text, 'latin1')
    // Written in a few pieces: the parser must cope with any split.
    void (async () => {
      for (let at = 0; at < bytes.length && !socket.destroyed;) {
        const n = 1 + Math.floor(r() * Math.min(bytes.length - at, r() < 0.3 ? 8 : 4096))
        socket.write(bytes.subarray(at, at + n))
        at += n
        if (r() < 0.1) await new Promise((res) => setTimeout(res, 5))
      }
    })()
  })
}

test(`${HANDSHAKES} generated hostile handshakes each get a complete answer or a timely close; the process serves on and leaks nothing`, async () => {
  const r = rng(SEED)
  const baseline = { fds: fds(), handles: handles() }
  const outcomes: Outcome[] = []
  const cases: string[] = []
  for (let i = 0; i < HANDSHAKES; i++) {
    let lines = handshake(port, '/realtime', { 'x-demo-user': 'anna' }).split('\n')
    const n = 1 + Math.floor(r() * 3)
    for (let k = 0; k < n; k++) lines = pick(r, MUTATIONS)(r, lines, port)
    cases.push(lines.join('\r\n') + '\r\n\r\n')
  }
  for (let i = 0; i < cases.length; i += 50) {
    const batch = cases.slice(i, i + 50).map((c) => exchange(c, r, r() < 0.08))
    outcomes.push(...await Promise.all(batch))
  }
  const hung = outcomes.map((o, i) => [o, i] as const).filter(([o]) => o.kind === 'hung')
  if (hung.length > 0) console.log(`hung (seed ${SEED}):`, hung.slice(0, 3).map(([, i]) => JSON.stringify(cases[i]!.slice(0, 300))))
  expect(hung).toHaveLength(0)
  const statuses = new Map<string, number>()
  for (const o of outcomes) statuses.set(`${o.kind}${o.status === undefined ? '' : ` ${o.status}`}`, (statuses.get(`${o.kind}${o.status === undefined ? '' : ` ${o.status}`}`) ?? 0) + 1)
  console.log(`fuzzed ${outcomes.length} handshakes (seed ${SEED}):`, Object.fromEntries([...statuses].sort()))
  // The mutations really reached the library's refusals, not only Node's parser.
  expect(Object.keys(rt.stats().refusals).length).toBeGreaterThan(8)
  expect(outcomes.some((o) => o.kind === 'upgraded')).toBe(true)

  // Still serving everyone else.
  expect((await rawRequest(port, handshake(port, '/realtime', { 'x-demo-user': 'anna' }))).status).toBe(101)
  expect((await fetch(`http://127.0.0.1:${port}/realtime/config`)).status).toBe(200)
  await settle(() => rt.stats().connections === 0 && rt.stats().fallbackStreams === 0)
  await settle(() => fds() <= baseline.fds + 2 && handles() <= baseline.handles + 2)
  expect(rt.stats()).toMatchObject({ connections: 0, fallbackStreams: 0, subscriptions: 0 })
  expect(fds()).toBeLessThanOrEqual(baseline.fds + 2)
  expect(handles()).toBeLessThanOrEqual(baseline.handles + 2)
})

// ---- frames -------------------------------------------------------------------

const FRAME_KINDS: ReadonlyArray<(r: () => number) => string | Buffer> = [
  () => 'not json',
  () => '',
  () => 'null',
  () => '[]',
  () => '"subscribe"',
  () => '{"op":42}',
  (r) => JSON.stringify({ op: pick(r, ['hello', 'SUBSCRIBE', 'publish', '__proto__', 'constructor', 'x'.repeat(100)]) }),
  (r) => JSON.stringify({ op: 'subscribe', topic: pick(r, ['', ' ', 'a b', '../../etc', 'x'.repeat(201), 'notifications:ben', '\u0000', 'é']) }),
  (r) => JSON.stringify({ op: 'subscribe', topic: 'projects', since: pick(r, [1, null, '', 'x'.repeat(65), {}, ['a'], 'nonsense-cursor']) }),
  (r) => JSON.stringify({ op: 'unsubscribe', topic: pick(r, [5, null, 'never-subscribed', 'projects']) }),
  () => '{"op":"subscribe","topic":"projects","__proto__":{"polluted":true}}',
  () => `{"op":"ping","deep":${'['.repeat(500)}${']'.repeat(500)}}`,
  () => '{"op":"ping"',
  (r) => Buffer.from(Array.from({ length: 1 + Math.floor(r() * 64) }, () => Math.floor(r() * 256))), // binary
  () => JSON.stringify({ op: 'ping', pad: 'p'.repeat(5000) }), // over maxPayload: 1009
]

test(`${FRAMES} malformed frames from signed-in clients: errors or documented closes; a bystander gets every event in order`, async () => {
  const r = rng(SEED + 1)
  const baseline = { fds: fds(), handles: handles() }
  const url = `/realtime`
  const bystander = await connect(port, { path: url, headers: { 'x-demo-user': 'ben' } })
  await bystander.subscribe('projects')
  const closeCodes = new Map<number, number>()
  let errorsSeen = 0
  let sent = 0
  let published = 0
  const clients = new Set<TestClient>()
  const open = async () => {
    const c = await connect(port, { path: url, headers: { 'x-demo-user': `fuzz${clients.size % 5}` } })
    c.ws.on('close', (code) => closeCodes.set(code, (closeCodes.get(code) ?? 0) + 1))
    clients.add(c)
    return c
  }
  let c = await open()
  while (sent < FRAMES) {
    if (c.closeCode !== undefined || c.ws.readyState !== WebSocket.OPEN) c = await open()
    const frame = pick(r, FRAME_KINDS)(r)
    if (r() < 0.02) {
      // Not a frame at all: raw garbage on the socket (the server must close with 1002, not throw).
      ;(c.ws as unknown as { _socket: import('node:net').Socket })._socket.write(Buffer.from([0x8f, 0x85, 1, 2, 3, 4, 5]))
    } else {
      c.ws.send(frame, { binary: Buffer.isBuffer(frame) })
    }
    sent++
    if (sent % 100 === 0) {
      await rt.publish('projects', 'project-updated', { seq: ++published })
      // Stay under the per-connection rate limit most of the time, so most frames reach the parser.
      await new Promise((res) => setTimeout(res, 2))
    }
  }
  for (const x of clients) errorsSeen += x.frames.filter((f) => f.op === 'error').length
  await settle(() => bystander.frames.filter((f) => f.op === 'event').length === published)
  const seqs = bystander.frames.filter((f) => f.op === 'event').map((f) => (f.data as { seq: number }).seq)
  expect(seqs).toEqual(Array.from({ length: published }, (_x, i) => i + 1))
  console.log(`fuzzed ${sent} frames on ${clients.size} connections (seed ${SEED + 1}): ${errorsSeen} error frames, closes`, Object.fromEntries(closeCodes))
  // The frames reached the parser and the limits (10 errors close a socket with 1008; 50 frames/s is the rate limit).
  expect(errorsSeen).toBeGreaterThan(100)
  expect(rt.stats().protocolErrors).toBeGreaterThanOrEqual(errorsSeen)
  for (const code of closeCodes.keys()) expect([1002, 1007, 1008, 1009]).toContain(code)
  expect(rt.stats().errors).toBe(0) // nothing reached a catch-all: every frame had a defined answer

  for (const x of clients) x.close()
  bystander.close()
  await settle(() => rt.stats().connections === 0)
  await settle(() => fds() <= baseline.fds + 2 && handles() <= baseline.handles + 2)
  expect(fds()).toBeLessThanOrEqual(baseline.fds + 2)
  expect(handles()).toBeLessThanOrEqual(baseline.handles + 2)
})

async function settle(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
}
