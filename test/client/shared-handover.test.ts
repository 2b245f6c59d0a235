/**
 * The shared connection's handover when the new leader is behind the other
 * tabs (issue #11). In a browser the lock can reach the next tab before it
 * has read the last events the old leader relayed; it then resumes from an
 * older cursor and the server replays events the other tabs already have.
 * Here that order is forced: two clients in one process, real `ws` to a
 * real server, Node's own BroadcastChannel, and a minimal in-process Web
 * Locks (FIFO, exclusive) that grants the next waiter in the same turn the
 * holder lets go, before any relayed event is read.
 */
import { client, startApp, waitFor, type App } from './helpers'
import type { RealtimeClient } from '../../lib/client'

/** Web Locks' `request`, exclusive and FIFO per name; enough for the shared client. */
class Locks {
  private readonly queues = new Map<string, Array<{ cb: () => Promise<void>; signal?: AbortSignal; done: (v: unknown) => void; fail: (e: unknown) => void }>>()
  private readonly held = new Set<string>()

  request(name: string, options: { signal?: AbortSignal }, cb: () => Promise<void>): Promise<unknown> {
    return new Promise((done, fail) => {
      const waiter = { cb, signal: options.signal, done, fail }
      const queue = this.queues.get(name) ?? []
      this.queues.set(name, queue)
      queue.push(waiter)
      options.signal?.addEventListener('abort', () => {
        const i = queue.indexOf(waiter)
        if (i >= 0) {
          queue.splice(i, 1)
          fail(new DOMException('aborted', 'AbortError'))
        }
      })
      this.next(name)
    })
  }

  private next(name: string): void {
    const queue = this.queues.get(name)!
    if (this.held.has(name) || queue.length === 0) return
    const w = queue.shift()!
    this.held.add(name)
    w.cb().then(w.done, w.fail).finally(() => {
      this.held.delete(name)
      this.next(name)
    })
  }
}

let a: App
const clients: RealtimeClient[] = []
const g = globalThis as { navigator?: unknown }
const navigator = g.navigator

beforeEach(() => {
  Object.defineProperty(globalThis, 'navigator', { value: { locks: new Locks() }, configurable: true, writable: true })
})
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  Object.defineProperty(globalThis, 'navigator', { value: navigator, configurable: true, writable: true })
  await a?.rt.close(200)
  a?.srv.close()
})

test('a new leader behind the other tabs resumes from its older cursor; the replay shows nothing twice in any tab', async () => {
  a = await startApp()
  const tab = (closeAt?: number): { c: RealtimeClient; got: number[] } => {
    const c = client(a.srv.base, { share: true, EventSource: null })
    clients.push(c)
    const got: number[] = []
    c.subscribe('project:1', (e) => {
      got.push((e.data as { n: number }).n)
      if (got.at(-1) === closeAt) c.close()
    })
    return { c, got }
  }
  const leader = tab(4)
  await waitFor(() => leader.c.state === 'live', 'the leader live')
  const next = tab()
  const third = tab()
  await waitFor(() => next.c.state === 'live' && third.c.state === 'live' && a.rt.stats().subscriptions === 1, 'followers live, one subscription')
  expect(a.rt.stats().connections).toBe(1)
  for (let n = 0; n < 3; n++) await a.rt.publish('project:1', 'tick', { n })
  await waitFor(() => next.got.length === 3 && third.got.length === 3, 'three events everywhere')
  // Two more reach the leader, which relays n=4 and closes in the same turn
  // (its page's handler closes it): the next tab leads before it reads n=4,
  // resumes from an older cursor, and the server replays what the tabs
  // already have or are about to read from the old leader's relay.
  await a.rt.publish('project:1', 'tick', { n: 3 })
  await a.rt.publish('project:1', 'tick', { n: 4 })
  await waitFor(() => leader.got.length === 5, 'the leader has five')
  await waitFor(() => a.rt.stats().connections === 1 && next.c.state === 'live', 'the next tab leads')
  await a.rt.publish('project:1', 'tick', { n: 5 })
  await waitFor(() => next.got.length >= 6 && third.got.length >= 6, 'six events everywhere')
  await new Promise((r) => setTimeout(r, 100))
  expect(next.got).toEqual([0, 1, 2, 3, 4, 5])
  expect(third.got).toEqual([0, 1, 2, 3, 4, 5])
})
