/**
 * The browser client when the session ends (issue #8): a 401 or a close 4401
 * puts it in `signed-out` and it stops retrying (no reconnect loop, no
 * console noise) until the app calls `reconnect()` after a new sign-in; a
 * topic whose access is withdrawn is dropped with an `error` event. Over the
 * WebSocket and over the SSE fallback alike.
 */
import type { IncomingMessage } from 'node:http'
import { Cleanup } from '../helpers/net'
import { client, collect, sleep, startApp, startProxy, waitFor } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

/** Users by `x-user` header are not possible from a browser; here the session is a switch per test. */
function sessionApp(signedIn: { value: boolean }, members = new Set(['anna'])) {
  return startApp({
    authenticate: (_req: IncomingMessage) => (signedIn.value ? { id: 'anna' } : null),
    authorize: (user, topic) => !topic.startsWith('project:') || members.has((user as { id: string }).id),
  }).then((a) => {
    cleanup.add(() => a.srv.close())
    cleanup.add(() => a.rt.close())
    return a
  })
}

describe.each([
  ['WebSocket', false],
  ['SSE fallback (behind an upgrade-stripping proxy)', true],
])('%s', (_name, viaProxy) => {
  async function setup(signedIn: { value: boolean }, members?: Set<string>) {
    const a = await sessionApp(signedIn, members)
    let base = a.srv.base
    if (viaProxy) {
      const p = await startProxy(a.srv.port, true)
      cleanup.add(() => p.srv.close())
      base = p.srv.base
    }
    const c = client(base)
    cleanup.add(() => c.close())
    const ended: string[] = []
    c.on('signed-out', ({ reason }) => ended.push(reason))
    return { a, c, ended }
  }

  test('refused with 401: signed-out once, no retry loop; reconnect() after sign-in goes back to work', async () => {
    const signedIn = { value: false }
    const { a, c, ended } = await setup(signedIn)
    const got = collect(c, 'projects')
    await waitFor(() => c.state === 'signed-out', 'signed-out')
    expect(ended).toEqual(['unauthenticated'])
    const hits = () => (a.hits.get('/realtime/config') ?? 0) + (a.hits.get('/realtime/events') ?? 0) + a.upgrades
    await sleep(150) // a fallback stream opened before the diagnosis came back may still land
    const before = hits()
    await sleep(600) // with a 50-400 ms backoff, a retry loop would have run several rounds by now
    expect(hits()).toBe(before)
    signedIn.value = true
    c.reconnect()
    await waitFor(() => c.state === (viaProxy ? 'fallback' : 'live'), 'back at work')
    await waitFor(() => a.rt.stats().subscriptions === 1, 'resubscribed')
    await a.rt.publish('projects', 'project-updated', { id: 1 })
    await waitFor(() => got.length === 1, 'an event after signing in again')
  })

  test('rt.disconnect: signed-out with the reason, nothing received after, no automatic reconnect', async () => {
    const signedIn = { value: true }
    const { a, c, ended } = await setup(signedIn)
    const got = collect(c, 'projects')
    await waitFor(() => a.rt.stats().subscriptions === 1, 'subscribed')
    signedIn.value = false // the CMS ends the session first…
    expect(a.rt.disconnect({ user: 'anna' }, 'signed out by an admin')).toBe(1) // …then the channel
    await waitFor(() => c.state === 'signed-out', 'signed-out')
    expect(ended).toEqual(['signed out by an admin'])
    await a.rt.publish('projects', 'project-updated', { id: 1 })
    const streams = a.hits.get('/realtime/events') ?? 0
    await sleep(400)
    expect(got).toEqual([])
    expect(a.hits.get('/realtime/events') ?? 0).toBe(streams) // EventSource did not reconnect by itself
    expect(a.rt.stats()).toMatchObject({ connections: 0, fallbackStreams: 0 })
  })

  test('rt.reauthorize: a withdrawn topic is dropped with an error event; the others keep flowing', async () => {
    const members = new Set(['anna'])
    const { a, c } = await setup({ value: true }, members)
    const project = collect(c, 'project:1')
    const overview = collect(c, 'projects')
    const errors: Array<{ code: string; topic?: string }> = []
    c.on('error', (e) => errors.push(e))
    await waitFor(() => a.rt.stats().subscriptions === 2, 'subscribed')
    members.delete('anna')
    expect(await a.rt.reauthorize({ topic: 'project:1' })).toBe(1)
    await waitFor(() => errors.length === 1, 'the error event')
    expect(errors[0]).toMatchObject({ code: 'forbidden', topic: 'project:1' })
    // Over SSE the client reopens its stream without the topic (a stream
    // naming it would now be refused whole).
    await waitFor(() => a.rt.stats().subscriptions === 1, 'one subscription left')
    await a.rt.publish('project:1', 'item-added', {})
    await a.rt.publish('projects', 'project-updated', {})
    await waitFor(() => overview.length === 1, 'the overview event')
    await sleep(100)
    expect(project).toEqual([])
    expect(c.state).toBe(viaProxy ? 'fallback' : 'live')
  })
})
