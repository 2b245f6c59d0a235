/**
 * examples/behind-proxy: the demo behind a proxy that strips WebSocket
 * upgrades. The client ends in `fallback`, an API write made through the
 * proxy reaches it over SSE, and its diagnosis (and the server's stats) name
 * the stripped upgrade; the page itself is served through the proxy too.
 */
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { createClient, type RealtimeClient, type RealtimeEvent } from 'cms-realtime/client'
import { browserFetch } from '../client/helpers'
import { startBehindProxy, type BehindProxy } from '../../examples/behind-proxy/start'
import { waitFor } from '../client/helpers'

let demo: BehindProxy | undefined
let client: RealtimeClient | undefined
afterEach(async () => {
  client?.close()
  await demo?.close()
  client = undefined
  demo = undefined
})

test('through the stripping proxy the client falls back to SSE, receives an API write, and says the proxy stripped the upgrade', async () => {
  demo = await startBehindProxy()
  const base = demo.proxy.base
  const page = await fetch(`${base}/?user=anna`)
  expect(page.status).toBe(200)
  expect(await page.text()).toContain('<script type="module" src="/app.js">')

  client = createClient({ configUrl: `${base}/realtime/config`, WebSocket, EventSource, fetch: browserFetch(base), backoff: { initialMs: 50, maxMs: 400 } })
  const states: string[] = []
  client.on('state', (s) => states.push(s))
  const got: RealtimeEvent[] = []
  client.subscribe('project:1', (e) => got.push(e))
  const c = client
  const rt = demo.rt
  await waitFor(() => c.state === 'fallback' && rt.stats().fallbackStreams === 1, 'fallback over SSE')

  const res = await fetch(`${base}/api/projects/1/items`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: 'Through the proxy' }),
  })
  expect(res.status).toBe(201)
  await waitFor(() => got.length === 1, 'the item-added event')
  expect(got[0]).toMatchObject({ topic: 'project:1', type: 'item-added', data: { item: { title: 'Through the proxy' } } })
  await waitFor(() => c.diagnosis !== null, 'a diagnosis')
  expect(c.diagnosis).toEqual({ cause: 'stripped_upgrade' })
  expect(states).not.toContain('live')
  expect(rt.stats().strippedUpgrades).toBeGreaterThanOrEqual(1)
  await waitFor(() => rt.stats().diagnoses.stripped_upgrade === 1, 'the report counted in stats')
})

test('straight to the app, bypassing the proxy, the same client is live', async () => {
  demo = await startBehindProxy()
  client = createClient({ configUrl: `${demo.app.base}/realtime/config`, WebSocket, EventSource, fetch: browserFetch(demo.app.base) })
  const c = client
  await waitFor(() => c.state === 'live', 'live')
  expect(demo.rt.stats()).toMatchObject({ strippedUpgrades: 0, fallbackStreams: 0 })
})
