/**
 * The client's presence and lock API, against a real server (issue #10):
 * `rt.presence(topic, meta)` handles, `rt.lock(key)` held or refused,
 * takeover with the `lost` event, and a reconnect that takes presence and
 * the lock back without anyone seeing them go.
 */
import { createServer, type IncomingMessage } from 'node:http'
import WebSocket, { WebSocketServer } from 'ws'
import type { Presence, RealtimeClient } from '../../lib/client'
import { publicTab } from '../../lib/collab/collab'
import { Cleanup, listen } from '../helpers/net'
import { client, startApp, waitFor, type App } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

/** `ws` with the user's header: what a browser's cookie does for the real thing. */
function wsAs(user: string) {
  return class extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols, { headers: { 'x-user': user } })
    }
  }
}

async function app(): Promise<App> {
  const a = await startApp({
    authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }),
    collab: { leaveGraceMs: 300, lockGraceMs: 800, leaseMs: 3000 },
  })
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  return a
}

function editor(a: App, user: string): RealtimeClient {
  const c = client(a.srv.base, { WebSocket: wsAs(user) })
  cleanup.add(() => c.close())
  return c
}

const users = (p: Presence) => p.members.map((m) => m.user).sort()

test('presence: each sees the others with their meta, tells its own tab apart, and sees who holds the lock', async () => {
  const a = await app()
  const anna = editor(a, 'anna')
  const ben = editor(a, 'ben')
  const pa = anna.presence('item:1', { field: 'title' })
  const pb = ben.presence('item:1', { field: null })
  await waitFor(() => pa.members.length === 2 && pb.members.length === 2, 'both present')
  expect(pa.you).toBe('anna')
  expect(pa.tab).toBe(publicTab('anna', anna.tab)) // as others see this tab; the client's own id stays private
  expect(pa.members.find((m) => m.tab === pa.tab)).toMatchObject({ user: 'anna', meta: { field: 'title' } })
  let changes = 0
  pb.on('change', () => changes++)
  pa.update({ field: 'body' })
  await waitFor(() => pb.members.some((m) => (m.meta as { field: string | null }).field === 'body'), 'the update')
  expect(changes).toBeGreaterThan(0)
  const lock = await anna.lock('item:1')
  expect(lock.held).toBe(true)
  await waitFor(() => pb.lock?.user === 'anna', 'the lock shown to ben')
  pa.leave()
  await waitFor(() => users(pb).join() === 'ben', 'anna left at once')
})

test('lock: refused with the holder; takeover, and the old holder gets `lost` with who; release frees it', async () => {
  const a = await app()
  const anna = editor(a, 'anna')
  const ben = editor(a, 'ben')
  await waitFor(() => anna.state === 'live' && ben.state === 'live', 'live')
  const held = await anna.lock('item:2')
  if (!held.held) throw new Error('not held')
  const lost: unknown[] = []
  held.on('lost', (e) => lost.push(e))
  const refused = await ben.lock('item:2')
  expect(refused).toMatchObject({ held: false, holder: { user: 'anna', tab: publicTab('anna', anna.tab) } })
  const took = await ben.lock('item:2', { takeover: true })
  expect(took.held).toBe(true)
  await waitFor(() => lost.length === 1, 'the lost event')
  expect(lost[0]).toMatchObject({ key: 'item:2', by: { user: 'ben', tab: publicTab('ben', ben.tab) } })
  if (took.held) took.release()
  let holder: unknown = 'not yet'
  for (let i = 0; i < 100 && holder !== null; i++) {
    holder = await a.rt.locks.holder('item:2')
    if (holder !== null) await new Promise((r) => setTimeout(r, 10))
  }
  expect(holder).toBeNull()
})

test('a reconnect takes presence and the lock back: nobody sees them go, no `lost`', async () => {
  const a = await app()
  const anna = editor(a, 'anna')
  const ben = editor(a, 'ben')
  anna.presence('item:3')
  const pb = ben.presence('item:3')
  await waitFor(() => pb.members.length === 2 && anna.state === 'live', 'both present')
  const held = await anna.lock('item:3')
  let lost = 0
  if (held.held) held.on('lost', () => lost++)
  // The network drops every socket (a deploy, a proxy restart).
  for (const s of a.sockets) s.destroy()
  await waitFor(() => anna.state !== 'live', 'anna noticed')
  await waitFor(() => anna.state === 'live', 'anna back', 5000)
  await new Promise((r) => setTimeout(r, 1000)) // past both graces
  expect(lost).toBe(0)
  expect(await a.rt.locks.holder('item:3')).toMatchObject({ user: 'anna', tab: publicTab('anna', anna.tab) })
  expect((await a.rt.presence('item:3')).map((m) => m.user).sort()).toEqual(['anna', 'ben'])
})

test('lock() with no connection (the channel switched off: manual refresh) rejects at once', async () => {
  const a = await app()
  a.rt.webSocketEnabled = false
  const anna = editor(a, 'anna')
  await expect(anna.lock('item:4')).rejects.toThrow(/locks need a connection/)
})

test('against a server that predates locks (unknown_op), lock() rejects instead of waiting forever', async () => {
  const wss = new WebSocketServer({ noServer: true })
  const srv = await listen(createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ webSocketEnabled: true, url: '/realtime', protocol: 'cms-realtime.v1', heartbeatMs: 25000, fallback: null }))
  }))
  srv.server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', () => ws.send(JSON.stringify({ op: 'error', code: 'unknown_op', message: 'unknown op "lock"' })))
  }))
  cleanup.add(() => srv.close())
  cleanup.add(() => wss.close())
  const c = client(srv.base)
  cleanup.add(() => c.close())
  await waitFor(() => c.state === 'live', 'live')
  await expect(c.lock('item:5')).rejects.toThrow(/does not support locks/)
})

test('losing access (rt.reauthorize): the lock fires `lost` (by null), the presence empties and is not rejoined, and an error names the topic', async () => {
  const members = new Set(['anna', 'ben'])
  const a = await startApp({
    authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }),
    authorize: (user, topic) => !topic.startsWith('project:1') || members.has((user as { id: string }).id),
    collab: { leaveGraceMs: 300, lockGraceMs: 800, leaseMs: 3000 },
  })
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  const ben = editor(a, 'ben')
  const anna = editor(a, 'anna')
  const pb = ben.presence('project:1/item:1', { editing: true })
  const pa = anna.presence('project:1/item:1')
  await waitFor(() => ben.state === 'live' && pa.members.length === 2, 'both present')
  const held = await ben.lock('project:1/item:1')
  if (!held.held) throw new Error('not held')
  const lost: unknown[] = []
  held.on('lost', (e) => lost.push(e))
  const errors: Array<{ code: string; topic?: string }> = []
  ben.on('error', (e) => errors.push(e))
  let changes = 0
  pb.on('change', () => changes++)
  members.delete('ben')
  await a.rt.reauthorize({ topic: 'project:1' })
  await waitFor(() => lost.length === 1 && errors.length === 1, 'lost and error')
  expect(lost[0]).toEqual({ key: 'project:1/item:1', by: null })
  expect(errors[0]).toMatchObject({ code: 'forbidden', topic: 'project:1/item:1' })
  expect(pb.members).toEqual([])
  expect(pb.lock).toBeNull()
  expect(changes).toBeGreaterThan(0)
  await waitFor(() => pa.members.length === 1 && pa.lock === null, 'anna sees ben gone and the lock free')
  // A reconnect does not rejoin what was withdrawn.
  for (const s of a.sockets) s.destroy()
  await waitFor(() => ben.state !== 'live', 'ben noticed')
  await waitFor(() => ben.state === 'live', 'ben back', 5000)
  await new Promise((r) => setTimeout(r, 200))
  expect((await a.rt.presence('project:1/item:1')).map((m) => m.user)).toEqual(['anna'])
})
