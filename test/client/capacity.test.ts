/**
 * A server at `maxConnections` (#18 item 7) answers 503 with a jittered
 * `Retry-After`, and the browser client waits it out instead of knocking
 * at its backoff (here 50-400 ms): a full node is not stormed by the very
 * clients it refused.
 */
import { Cleanup } from '../helpers/net'
import { client, sleep, startApp, waitFor } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

test('refused for capacity, the client makes no new attempt on any transport before Retry-After, and says why', async () => {
  const a = await startApp({ maxConnections: 1 })
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  const first = client(a.srv.base)
  cleanup.add(() => first.close())
  await waitFor(() => first.state === 'live', 'the first client live')
  first.subscribe('projects', () => {})

  const upgradesBefore = a.upgrades
  const second = client(a.srv.base)
  cleanup.add(() => second.close())
  second.subscribe('projects', () => {})
  await waitFor(() => second.diagnosis !== null, 'a diagnosis')
  expect(second.diagnosis).toEqual({ cause: 'refused', detail: 'over_capacity' })
  await sleep(300) // the refused stream's one HEAD (why was it refused?) may still be on its way
  const streamsTried = a.hits.get('/realtime/events') ?? 0
  // The fast backoff would have tried 6 or more times in this long.
  await sleep(2200)
  expect(a.upgrades - upgradesBefore).toBe(1)
  expect(a.hits.get('/realtime/events') ?? 0).toBe(streamsTried)
  expect(second.state).toBe('offline')
  expect(a.rt.stats().refusals.over_capacity).toBeGreaterThanOrEqual(1)
})
