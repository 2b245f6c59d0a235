/**
 * Subscriptions named in the handshake (issue #11): `?topics=a,b&since=V` on
 * the upgrade URL subscribes at once, authorised like `subscribe`, with
 * recovery from `since`; the browser client uses it on every (re)connect, so
 * a reconnect needs no round trip; a malformed list is a 400.
 */
import WebSocket from 'ws'
import type { IncomingMessage } from 'node:http'
import { encodeCursors } from '../lib/client/cursor-vector'
import { fixture, type Fixture } from './helpers/fixture'
import { connect, rawRequest, handshake } from './helpers/net'
import { client, collect, waitFor } from './client/helpers'

let f: Fixture
afterEach(async () => { await f?.close() })

test('the topics on the upgrade URL are subscribed without a frame; since recovers; authorize applies', async () => {
  f = await fixture({ authorize: (_u, topic) => topic !== 'secret' })
  const first = await f.connect({ path: '/realtime?topics=projects,project:1' })
  expect(await first.next((fr) => fr.op === 'subscribed' && fr.topic === 'projects')).toMatchObject({ cursor: expect.any(String) })
  const sub1 = await first.next((fr) => fr.op === 'subscribed' && fr.topic === 'project:1')
  await f.rt.publish('project:1', 'item-added', { n: 1 })
  const e1 = await first.op('event')
  first.close()
  await f.rt.publish('project:1', 'item-added', { n: 2 })
  await f.rt.publish('project:1', 'item-added', { n: 3 })
  // Reconnect naming the cursors: the missed events, in order, with no subscribe sent.
  const since = encodeCursors([undefined, e1.id as string])
  const again = await f.connect({ path: `/realtime?topics=projects,project:1&since=${since}` })
  expect(await again.next((fr) => fr.op === 'subscribed' && fr.topic === 'project:1')).toEqual({ op: 'subscribed', topic: 'project:1', recovered: true })
  expect([(await again.op('event')).data, (await again.op('event')).data]).toEqual([{ n: 2 }, { n: 3 }])
  expect(sub1).toBeDefined()
  // A forbidden topic in the list: an error for it, the others subscribed.
  const mixed = await f.connect({ path: '/realtime?topics=secret,projects' })
  expect(await mixed.next((fr) => fr.op === 'error')).toMatchObject({ code: 'forbidden', topic: 'secret' })
  expect(await mixed.next((fr) => fr.op === 'subscribed')).toMatchObject({ topic: 'projects' })
})

test('a malformed list is refused with 400 bad_handshake', async () => {
  f = await fixture()
  for (const q of ['topics=a%20b', 'topics=a,a', `topics=${Array.from({ length: 101 }, (_, i) => `t${i}`).join(',')}`, 'topics=a,b&since=x']) {
    const r = await rawRequest(f.srv.port, handshake(f.srv.port, `/realtime?${q}`))
    expect({ q, status: r.status, error: (JSON.parse(r.body) as { error: string }).error }).toEqual({ q, status: 400, error: 'bad_handshake' })
  }
})

test('the browser client names its topics in the handshake on every (re)connect: no subscribe frame, nothing lost', async () => {
  f = await fixture({ authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user'] ?? 'anna') }) })
  const sent: string[] = []
  const urls: string[] = []
  class Spy extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols)
      urls.push(url)
    }
    override send(data: string): void {
      sent.push(data)
      super.send(data)
    }
  }
  const c = client(f.srv.base, { WebSocket: Spy as never })
  const got = collect(c, 'project:1')
  const got2 = collect(c, 'projects')
  await waitFor(() => c.state === 'live' && f.rt.stats().subscriptions === 2, 'live and subscribed')
  await f.rt.publish('project:1', 'x', { n: 1 })
  await waitFor(() => got.length === 1, 'the first event')
  // The server drops every connection; the client reconnects with cursors in the handshake.
  f.rt.webSocketEnabled = false
  await f.rt.publish('project:1', 'x', { n: 2 })
  f.rt.webSocketEnabled = true
  await waitFor(() => got.length === 2 && c.state === 'live', 'the missed event after reconnecting', 8000)
  expect(got.map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }])
  expect(got2).toEqual([])
  expect(urls.length).toBeGreaterThanOrEqual(2)
  expect(urls.at(-1)).toMatch(/[?&]topics=project%3A1%2Cprojects&since=[^&]+/)
  expect(sent.filter((s) => s.includes('"subscribe"'))).toEqual([])
  c.close()
})

test('the 101 and the answers to the handshake topics leave in one write to the kernel, not one each', async () => {
  f = await fixture()
  // Count the socket's writes where Node hands them to libuv (one syscall each).
  let writes = 0
  f.srv.server.prependListener('upgrade', (_req: IncomingMessage, socket: { _handle: Record<string, unknown> }) => {
    const handle = socket._handle
    for (const name of ['writev', 'writeBuffer', 'writeUtf8String', 'writeLatin1String', 'writeAsciiString']) {
      const original = handle[name] as ((...a: unknown[]) => unknown) | undefined
      if (original !== undefined) handle[name] = (...a: unknown[]) => { writes++; return original.apply(handle, a) }
    }
  })
  const c = await f.connect({ path: '/realtime?topics=projects,project:1' })
  await c.next((fr) => fr.op === 'subscribed' && fr.topic === 'projects')
  await c.next((fr) => fr.op === 'subscribed' && fr.topic === 'project:1')
  expect(writes).toBe(1)
})
