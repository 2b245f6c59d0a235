/**
 * The browser client in Node, against a real server on 127.0.0.1 (`ws`
 * injected as its WebSocket): live delivery, recovery after a restart,
 * the run-time off switch, manual refresh, heartbeat timeout and resync.
 */
import { createServer } from 'node:http'
import WebSocket, { WebSocketServer } from 'ws'
import { PROTOCOL } from '../../lib/client'
import { Cleanup, listen } from '../helpers/net'
import { client, collect, startApp, waitFor, sleep } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

async function app(options: Parameters<typeof startApp>[0] = {}) {
  const a = await startApp(options)
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  return a
}

function countingWebSocket() {
  const made: string[] = []
  class Counting extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols)
      made.push(url)
    }
  }
  return { made, Counting }
}

test('reads config, goes live over WebSocket and delivers events of subscribed topics only', async () => {
  const a = await app()
  const c = client(a.srv.base)
  cleanup.add(() => c.close())
  const states: string[] = []
  c.on('state', (s) => states.push(s))
  const got = collect(c, 'project:1')
  const other = collect(c, 'project:2')
  await waitFor(() => a.rt.stats().subscriptions === 2, 'two subscriptions')
  await a.rt.publish('project:1', 'item-added', { id: 7 })
  await a.rt.publish('projects', 'project-updated', {})
  await waitFor(() => got.length === 1, 'the event')
  expect(got[0]).toMatchObject({ topic: 'project:1', type: 'item-added', data: { id: 7 } })
  expect(other).toEqual([])
  expect(states).toEqual(['live'])
  expect(c.state).toBe('live')
})

test('the function subscribe returns unsubscribes on the server when the last handler goes', async () => {
  const a = await app()
  const c = client(a.srv.base)
  cleanup.add(() => c.close())
  const off1 = c.subscribe('projects', () => {})
  const off2 = c.subscribe('projects', () => {})
  await waitFor(() => a.rt.stats().subscriptions === 1, 'subscribed once')
  off1()
  await sleep(50)
  expect(a.rt.stats().subscriptions).toBe(1)
  off2()
  await waitFor(() => a.rt.stats().subscriptions === 0, 'unsubscribed')
})

test('after a server restart it reconnects and recovers the events published meanwhile, without gap or duplicate', async () => {
  const a = await app()
  const c = client(a.srv.base, { EventSource: null })
  cleanup.add(() => c.close())
  const got = collect(c, 'project:1')
  await waitFor(() => a.rt.stats().subscriptions === 1, 'subscribed')
  await a.rt.publish('project:1', 'e', { n: 0 })
  await waitFor(() => got.length === 1, 'first event')
  // "Restart": the HTTP server goes away (every socket with it), the Realtime and its history stay.
  const port = a.srv.port
  await new Promise<void>((resolve) => {
    a.srv.server.close(() => resolve())
    for (const s of a.sockets) s.destroy()
  })
  await waitFor(() => c.state !== 'live', 'the client noticing')
  for (let n = 1; n <= 5; n++) await a.rt.publish('project:1', 'e', { n })
  await sleep(300) // a few failed reconnects
  expect(c.state).toBe('offline')
  a.srv.server.listen(port, '127.0.0.1')
  await waitFor(() => c.state === 'live', 'live again', 8000)
  await a.rt.publish('project:1', 'e', { n: 6 })
  await waitFor(() => got.length >= 7, 'all events')
  await sleep(50)
  expect(got.map((e) => (e.data as { n: number }).n)).toEqual([0, 1, 2, 3, 4, 5, 6])
})

test('switched off at run time with fallback "none", it re-reads config and goes quiet in manual-refresh', async () => {
  const a = await app({ fallback: 'none' })
  const { made, Counting } = countingWebSocket()
  const c = client(a.srv.base, { WebSocket: Counting })
  cleanup.add(() => c.close())
  c.subscribe('projects', () => {})
  await waitFor(() => c.state === 'live', 'live')
  a.rt.webSocketEnabled = false
  await waitFor(() => c.state === 'manual-refresh', 'manual-refresh')
  expect(c.diagnosis).toEqual({ cause: 'disabled' })
  const configReads = a.hits.get('/realtime/config')
  await sleep(500)
  expect(made).toHaveLength(1)
  expect(a.hits.get('/realtime/config')).toBe(configReads)
})

test('switched off at run time with fallbackWhenDisabled, it moves to the stream and keeps every event', async () => {
  const a = await app({ fallbackWhenDisabled: true })
  const c = client(a.srv.base)
  cleanup.add(() => c.close())
  const got = collect(c, 'projects')
  await waitFor(() => c.state === 'live' && a.rt.stats().subscriptions === 1, 'live')
  await a.rt.publish('projects', 'e', { n: 0 })
  await waitFor(() => got.length === 1, 'first event')
  a.rt.webSocketEnabled = false
  await a.rt.publish('projects', 'e', { n: 1 })
  await waitFor(() => c.state === 'fallback' && a.rt.stats().fallbackStreams === 1, 'fallback')
  await a.rt.publish('projects', 'e', { n: 2 })
  await waitFor(() => got.length === 3, 'three events')
  expect(got.map((e) => (e.data as { n: number }).n)).toEqual([0, 1, 2])
})

test('switched off at run time with the defaults, it settles in manual-refresh and stops connecting', async () => {
  const a = await app()
  const c = client(a.srv.base)
  cleanup.add(() => c.close())
  c.subscribe('projects', () => {})
  await waitFor(() => c.state === 'live' && a.rt.stats().subscriptions === 1, 'live')
  a.rt.webSocketEnabled = false
  await waitFor(() => c.state === 'manual-refresh', 'manual-refresh')
  const upgrades = a.upgrades
  await sleep(300)
  expect(a.upgrades).toBe(upgrades)
  expect(a.rt.stats()).toMatchObject({ connections: 0, fallbackStreams: 0 })
})

test('disabled from the start with fallback "none": manual-refresh, and no socket is ever opened', async () => {
  const a = await app({ webSocketEnabled: false, fallback: 'none' })
  const { made, Counting } = countingWebSocket()
  const c = client(a.srv.base, { WebSocket: Counting })
  cleanup.add(() => c.close())
  c.subscribe('projects', () => {})
  await waitFor(() => c.state === 'manual-refresh', 'manual-refresh')
  await sleep(300)
  expect(made).toEqual([])
  expect(a.upgrades).toBe(0)
  expect(a.hits.get('/realtime/events')).toBeUndefined()
  expect(a.hits.get('/realtime/config')).toBe(1)
})

test('a link that stops answering is detected by heartbeat timeout and replaced', async () => {
  // A server that accepts the socket and then never says a word.
  const wss = new WebSocketServer({ noServer: true, handleProtocols: () => PROTOCOL })
  let accepted = 0
  const srv = await listen(createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' })
    res.end(JSON.stringify({ webSocketEnabled: true, url: '/realtime', protocol: PROTOCOL, heartbeatMs: 100, fallback: null }))
  }))
  srv.server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => {
    accepted++
    ws.on('message', () => {}) // pings go unanswered
  }))
  cleanup.add(() => srv.close())
  cleanup.add(() => new Promise((r) => wss.close(r)))
  const c = client(srv.base, { heartbeatTimeoutMs: 100 })
  cleanup.add(() => c.close())
  const states: string[] = []
  c.on('state', (s) => states.push(s))
  await waitFor(() => accepted >= 2 && c.state === 'live', 'a second connection', 5000)
  expect(states.slice(0, 3)).toEqual(['live', 'connecting', 'live'])
})

test('a cursor history cannot cover gets a resync, and the client announces it', async () => {
  const a = await app()
  const c = client(a.srv.base, { EventSource: null })
  cleanup.add(() => c.close())
  const resyncs: string[] = []
  c.on('resync', (t) => resyncs.push(t))
  const got = collect(c, 'project:1')
  await waitFor(() => a.rt.stats().subscriptions === 1, 'subscribed')
  // A new Realtime on the same port = a restart that lost history (new epoch).
  const port = a.srv.port
  await new Promise<void>((resolve) => {
    a.srv.server.close(() => resolve())
    for (const s of a.sockets) s.destroy()
  })
  await a.rt.close()
  const b = await startApp()
  cleanup.add(() => b.srv.close())
  cleanup.add(() => b.rt.close())
  await b.srv.close()
  b.srv.server.listen(port, '127.0.0.1')
  await waitFor(() => resyncs.length === 1, 'a resync', 8000)
  expect(resyncs).toEqual(['project:1'])
  await waitFor(() => b.rt.stats().subscriptions === 1, 'subscribed on the new server')
  await b.rt.publish('project:1', 'e', {})
  await waitFor(() => got.length === 1, 'live after the resync')
})
