/**
 * `cms-realtime/prometheus` (#18 item 8): scraped over HTTP from the app's
 * own guarded `/metrics`, the way an operator's Prometheus reads it, while
 * real clients connect, fall back, get refused and recover.
 */
import type { IncomingMessage } from 'node:http'
import { Registry } from 'prom-client'
import { registerMetrics } from 'cms-realtime/prometheus'
import { createRealtime, type Realtime } from 'cms-realtime'
import { connect, handshake, listen, rawRequest, type Listening, type TestClient } from './helpers/net'
import { openStream, type Stream } from './helpers/sse'

let rt: Realtime
let srv: Listening
let registry: Registry
const open: Array<TestClient | Stream> = []

beforeEach(async () => {
  registry = new Registry()
  rt = createRealtime({ authenticate: (req: IncomingMessage) => (req.headers['x-user'] === undefined ? null : { id: String(req.headers['x-user']) }) })
  registerMetrics(rt, { registry })
  srv = await listen(async (req, res) => {
    if (rt.handleRequest(req, res)) return
    // The app's endpoint, behind its own guard: the library never serves metrics itself.
    if (req.url === '/metrics') {
      if (req.headers.authorization !== 'Bearer ops') return void res.writeHead(401).end()
      res.writeHead(200, { 'Content-Type': registry.contentType }).end(await registry.metrics())
      return
    }
    res.writeHead(404).end()
  })
  rt.attach(srv.server)
})
afterEach(async () => {
  for (const c of open.splice(0)) c.close()
  await rt.close(200)
  await srv.close()
})

/** One scrape, as `metric{labels}` → value. */
async function scrape(): Promise<Map<string, number>> {
  const r = await fetch(`${srv.base}/metrics`, { headers: { Authorization: 'Bearer ops' } })
  expect(r.status).toBe(200)
  const out = new Map<string, number>()
  for (const line of (await r.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const sp = line.lastIndexOf(' ')
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)))
  }
  return out
}

test('connections by transport, deliveries, refusals by reason, recoveries and resyncs, session ends: the scrape follows what happens', async () => {
  expect((await fetch(`${srv.base}/metrics`)).status).toBe(401) // the app's guard, not ours
  const before = await scrape()
  expect(before.get('cms_realtime_node_num_clients')).toBe(0)
  expect(before.get('cms_realtime_bus_connected')).toBe(1)

  const ws = await connect(srv.port, { headers: { 'x-user': 'anna' } })
  open.push(ws)
  const sub = await ws.subscribe('projects')
  const stream = await openStream(`${srv.base}/realtime/events?topics=projects`, { 'x-user': 'ben' })
  open.push(stream)
  await stream.until((s) => s.frames().some((f) => f.op === 'subscribed'), 'subscribed')
  await rt.publish('projects', 'updated', { n: 1 })
  await ws.op('event')
  await stream.until((s) => s.frames().some((f) => f.op === 'event'), 'event')
  // A reconnect that recovers, and one whose cursor history cannot cover.
  const back = await connect(srv.port, { headers: { 'x-user': 'anna' } })
  open.push(back)
  expect(await back.subscribe('projects', String(sub.cursor))).toMatchObject({ recovered: true })
  const lost = await connect(srv.port, { headers: { 'x-user': 'anna' } })
  open.push(lost)
  lost.send({ op: 'subscribe', topic: 'projects', since: 'not-a-cursor-of-ours' })
  await lost.op('resync')
  await rawRequest(srv.port, handshake(srv.port, '/realtime', { 'Sec-WebSocket-Version': '8', 'x-user': 'anna' }))
  await rawRequest(srv.port, handshake(srv.port, '/realtime'))
  rt.disconnect({ user: 'ben' })

  const m = await scrape()
  expect(m.get('cms_realtime_client_connections_inflight{transport="websocket"}')).toBe(3)
  expect(m.get('cms_realtime_client_connections_inflight{transport="sse"}')).toBe(0) // ben was disconnected
  expect(m.get('cms_realtime_node_num_clients')).toBe(3)
  expect(m.get('cms_realtime_events_published_total')).toBe(1)
  expect(m.get('cms_realtime_events_delivered_total')).toBeGreaterThanOrEqual(3) // anna, ben, and the recovered replay
  expect(m.get('cms_realtime_client_refusals_total{reason="bad_version"}')).toBe(1)
  expect(m.get('cms_realtime_client_refusals_total{reason="unauthenticated"}')).toBe(1)
  expect(m.get('cms_realtime_client_recover_total{recovered="yes"}')).toBe(1)
  expect(m.get('cms_realtime_client_recover_total{recovered="no"}')).toBe(1)
  expect(m.get('cms_realtime_sessions_ended_total')).toBe(1)
  expect(m.get('cms_realtime_websocket_enabled')).toBe(1)
  expect(m.get('cms_realtime_errors_total')).toBe(0)
})

test('the remover takes every metric out of the registry; a bad prefix is a TypeError', async () => {
  const own = new Registry()
  const remove = registerMetrics(rt, { registry: own, prefix: 'cms_' })
  expect((await own.metrics())).toContain('cms_node_num_clients 0')
  remove()
  expect((await own.metrics()).trim()).toBe('')
  expect(() => registerMetrics(rt, { registry: own, prefix: 'bad-prefix' })).toThrow(TypeError)
})
