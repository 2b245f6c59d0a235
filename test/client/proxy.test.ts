/**
 * The proxy story, in Node: behind a proxy that strips the upgrade (nginx's
 * plain proxy_pass), the client ends in `fallback`, receives every event,
 * and its diagnosis says the proxy stripped the upgrade; behind one that
 * forwards upgrades it stays `live`; and when the proxy starts forwarding,
 * the client moves back to the WebSocket without losing or repeating an event.
 */
import type { RealtimeClient } from '../../lib/client'
import { Cleanup } from '../helpers/net'
import { client, collect, startApp, startProxy, waitFor, sleep } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

async function setup(strip: boolean) {
  const app = await startApp()
  cleanup.add(() => app.srv.close())
  cleanup.add(() => app.rt.close())
  const proxy = await startProxy(app.srv.port, strip)
  cleanup.add(() => proxy.srv.close())
  return { app, proxy }
}

function track(c: RealtimeClient): string[] {
  const states: string[] = []
  c.on('state', (s) => states.push(s))
  cleanup.add(() => c.close())
  return states
}

test('behind a proxy that strips the upgrade, the client falls back to SSE, gets every event and says why', async () => {
  const { app, proxy } = await setup(true)
  const c = client(proxy.srv.base)
  const states = track(c)
  const got = collect(c, 'project:1')
  await waitFor(() => c.state === 'fallback' && app.rt.stats().fallbackStreams === 1, 'fallback stream')
  for (let i = 0; i < 20; i++) await app.rt.publish('project:1', 'item-added', { i })
  await waitFor(() => got.length === 20, '20 events over SSE')
  expect(got.map((e) => (e.data as { i: number }).i)).toEqual([...Array(20).keys()])
  await waitFor(() => c.diagnosis !== null, 'a diagnosis')
  expect(c.diagnosis).toEqual({ cause: 'stripped_upgrade' })
  expect(states).not.toContain('live')
  expect(app.rt.stats().strippedUpgrades).toBeGreaterThanOrEqual(1)
  await waitFor(() => app.rt.stats().diagnoses.stripped_upgrade === 1, 'the report counted in stats')
})

test('behind a proxy that forwards upgrades, the client is live over WebSocket', async () => {
  const { app, proxy } = await setup(false)
  const c = client(proxy.srv.base)
  const states = track(c)
  const got = collect(c, 'projects')
  await waitFor(() => c.state === 'live' && app.rt.stats().subscriptions === 1, 'live and subscribed')
  await app.rt.publish('projects', 'project-updated', { id: 1 })
  await waitFor(() => got.length === 1, 'the event')
  expect(states).toEqual(['live'])
  expect(app.rt.stats()).toMatchObject({ strippedUpgrades: 0, fallbackStreams: 0, connections: 1 })
  expect(c.diagnosis).toBeNull()
})

test('when the proxy starts forwarding upgrades, the client moves back to the WebSocket without loss or duplicates', async () => {
  const { app, proxy } = await setup(true)
  const c = client(proxy.srv.base)
  track(c)
  const got = collect(c, 'project:1')
  await waitFor(() => c.state === 'fallback' && app.rt.stats().fallbackStreams === 1, 'fallback')
  let n = 0
  let publishing = true
  const publisher = (async () => {
    while (publishing) {
      await app.rt.publish('project:1', 'tick', { n: n++ })
      await sleep(2)
    }
  })()
  await sleep(100)
  proxy.strip = false
  await waitFor(() => c.state === 'live', 'back on the WebSocket', 8000)
  await sleep(100)
  publishing = false
  await publisher
  await waitFor(() => got.length >= n, `all ${n} events`)
  await sleep(50)
  expect(got.map((e) => (e.data as { n: number }).n)).toEqual([...Array(n).keys()])
  await waitFor(() => app.rt.stats().fallbackStreams === 0, 'the SSE stream ended on the server')
  expect(app.rt.stats().connections).toBe(1)
})
