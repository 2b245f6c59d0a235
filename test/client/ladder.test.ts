/**
 * The fallback ladder in Node, the real client behind a real proxy (http-proxy)
 * that strips the upgrade and, on demand, holds streamed responses until
 * they end (what nginx's gzip on text/event-stream does): the client steps
 * from SSE down to long polling by itself within its first-frame timeout,
 * says why, loses and repeats nothing, goes back up when the proxy is
 * fixed, and says manual-refresh when not even polls complete.
 */
import type { RealtimeClient, RealtimeEvent } from '../../lib/client'
import { Cleanup } from '../helpers/net'
import { client, collect, startApp, waitFor, sleep, type App } from './helpers'
import { startUpgradeProxy, type UpgradeProxy } from '../../examples/behind-proxy/proxy'
import type { RealtimeOptions } from '../../lib/types'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

async function setup(hold: boolean, options: RealtimeOptions = {}): Promise<{ app: App; proxy: UpgradeProxy }> {
  const app = await startApp(options)
  cleanup.add(() => app.srv.close())
  cleanup.add(() => app.rt.close())
  const proxy = await startUpgradeProxy(app.srv.port, { strip: true, hold })
  cleanup.add(() => proxy.close())
  return { app, proxy }
}

function watch(c: RealtimeClient): string[] {
  const seen: string[] = []
  c.on('state', (s) => seen.push(`${s}/${c.transport}`))
  c.on('transport', (t) => seen.push(`transport ${t}`))
  cleanup.add(() => c.close())
  return seen
}

/** Publish `n` numbered events on `topic`, one every `everyMs`. */
function publisher(app: App, topic: string, everyMs: number) {
  let n = 0
  let on = true
  const done = (async () => {
    while (on) {
      await app.rt.publish(topic, 'tick', { n: n++ })
      await sleep(everyMs)
    }
  })()
  return { stop: async () => { on = false; await done; return n } }
}

const numbers = (got: RealtimeEvent[]) => got.map((e) => (e.data as { n: number }).n)

test('a proxy that holds the stream: the client steps down to long polling within its first-frame timeout, says why, and the server counts it', async () => {
  const { app, proxy } = await setup(true)
  const t0 = Date.now()
  const c = client(proxy.base, { firstFrameTimeoutMs: 800 })
  const seen = watch(c)
  const got = collect(c, 'project:1')
  await waitFor(() => c.state === 'fallback' && c.transport === 'poll', 'fallback over long polling', 5000)
  const took = Date.now() - t0
  expect(took).toBeGreaterThanOrEqual(700)
  expect(took).toBeLessThan(3000)
  expect(seen).not.toContain('fallback/sse') // the held stream never looked fine
  expect(c.diagnosis).toEqual({ cause: 'stripped_upgrade', stepDown: { from: 'sse', to: 'poll', cause: 'buffering_proxy' } })
  await waitFor(() => app.rt.stats().stepDowns.buffering_proxy === 1, 'the step down counted by the server')
  for (let i = 0; i < 20; i++) await app.rt.publish('project:1', 'tick', { n: i })
  await waitFor(() => got.length === 20, '20 events over long polling')
  expect(numbers(got)).toEqual([...Array(20).keys()])
})

test('events published all through the step down and the way back up arrive exactly once, in order', async () => {
  const { app, proxy } = await setup(true)
  const c = client(proxy.base, { firstFrameTimeoutMs: 600, streamProbeMs: 500 })
  watch(c)
  const got = collect(c, 'project:1')
  await waitFor(() => app.rt.stats().subscriptions === 1, 'subscribed (over the held stream)')
  const pub = publisher(app, 'project:1', 3)
  await waitFor(() => c.transport === 'poll', 'on long polling', 5000)
  await sleep(300)
  proxy.hold = false // the proxy is fixed
  await waitFor(() => c.transport === 'sse' && c.state === 'fallback', 'back up on SSE', 8000)
  await sleep(200)
  const n = await pub.stop()
  // Counted from the first event after the client's subscription was acknowledged (by the first poll: the held stream's never arrived).
  const first = numbers(got)[0]!
  await waitFor(() => got.length >= n - first, `all ${n - first} events from ${first}`)
  await sleep(100)
  expect(numbers(got)).toEqual(Array.from({ length: n - first }, (_x, i) => first + i))
  expect(app.rt.stats()).toMatchObject({ transports: { sse: 1, poll: 0 } })
})

test('when polls do not complete either, the page is told to refresh; when one does, it is live again', async () => {
  const { app, proxy } = await setup(true)
  proxy.fail = /\/realtime\/poll/
  const c = client(proxy.base, { firstFrameTimeoutMs: 500 })
  const seen = watch(c)
  const got = collect(c, 'projects')
  await waitFor(() => c.state === 'manual-refresh', 'manual-refresh', 8000)
  expect(c.diagnosis?.stepDown).toEqual({ from: 'poll', to: null, cause: 'poll_failed' })
  expect(c.transport).toBeNull()
  expect(seen).not.toContain('connecting/null') // it never went back to looking as if it were about to work
  proxy.fail = null
  await waitFor(() => c.state === 'fallback' && c.transport === 'poll', 'polling again', 8000)
  await app.rt.publish('projects', 'updated', { n: 1 })
  await waitFor(() => got.length === 1, 'the event')
})

test('without EventSource (or with SSE not offered) the client polls at once', async () => {
  const { app, proxy } = await setup(false, { fallback: ['poll'] })
  const c = client(proxy.base)
  watch(c)
  const got = collect(c, 'projects')
  await waitFor(() => c.transport === 'poll' && app.rt.stats().transports.poll === 1, 'polling')
  await app.rt.publish('projects', 'updated', { n: 0 })
  await waitFor(() => got.length === 1, 'the event')
  expect(app.rt.stats().transports.sse).toBe(0)
})

test('a logout ends a polling client: signed-out, not a loop of 401s', async () => {
  const signedIn = new Set(['anna'])
  const { app, proxy } = await setup(true, {
    fallback: ['poll'],
    authenticate: (req) => {
      const u = /user=(\w+)/.exec(String(req.headers.cookie ?? ''))?.[1]
      return u !== undefined && signedIn.has(u) ? { id: u } : null
    },
  })
  const c = client(proxy.base, {
    fetch: (url, init = {}) => fetch(url, { ...init, headers: { ...init.headers, Cookie: 'user=anna', ...(init.method === 'POST' ? { Origin: proxy.base } : {}) } }),
  })
  watch(c)
  const got = collect(c, 'projects')
  await waitFor(() => app.rt.stats().transports.poll === 1, 'polling')
  signedIn.delete('anna')
  expect(app.rt.disconnect({ user: 'anna' })).toBe(1)
  await waitFor(() => c.state === 'signed-out', 'signed-out')
  const polls = app.hits.get('/realtime/poll')
  await app.rt.publish('projects', 'updated', {})
  await sleep(500)
  expect(got).toHaveLength(0)
  expect(app.hits.get('/realtime/poll')).toBe(polls)
})

test('a token-signed-in client polls with tickets: one POST /ticket, then each answer carries the next', async () => {
  const { app, proxy } = await setup(true, {
    fallback: ['poll'],
    authenticate: (req) => (req.headers.authorization === 'Bearer t0k' ? { id: 'anna' } : null),
  })
  const c = client(proxy.base, { token: () => 't0k' })
  watch(c)
  const got = collect(c, 'projects')
  await waitFor(() => app.rt.stats().transports.poll === 1, 'polling')
  for (let i = 0; i < 5; i++) {
    await app.rt.publish('projects', 'updated', { n: i })
    await sleep(30)
  }
  await waitFor(() => got.length === 5, '5 events')
  expect(numbers(got)).toEqual([0, 1, 2, 3, 4])
  // Every WebSocket attempt spends a ticket; the polls spend none of their own after the first.
  const polls = app.hits.get('/realtime/poll')!
  expect(polls).toBeGreaterThanOrEqual(5)
  expect(app.hits.get('/realtime/ticket')!).toBeLessThanOrEqual((app.hits.get('/realtime') ?? 0) + 1)
})
