/**
 * What the adapters' middleware carries besides being middleware: the core's
 * public methods, delegated, so `app.use(rt)` and `rt.publish(...)` are one
 * object. Shared by every adapter so none re-implements the core.
 */
import type { Realtime } from '../server/realtime'
import type { PresenceMember } from '../client/wire'
import type { AttachableServer, ConnectionSelector, Published, RealtimeStats, User } from '../types'

export interface RealtimeHandle<Ctx, U = User> {
  /** The framework-free core behind this middleware. */
  readonly core: Realtime<Ctx>
  /** Publish an event to every subscriber of `topic` (see `Realtime.publish`). */
  publish(topic: string, type: string, data?: unknown): Promise<Published>
  /** Listen to a server's `upgrade` event (idempotent). */
  attach(server: AttachableServer): this
  /** Send 1001 to every client, stop listening, release the bus; stragglers are terminated after `timeoutMs` (default 2000). */
  close(timeoutMs?: number): Promise<void>
  stats(): RealtimeStats
  /** End the selected users' connections and streams now (close 4401); see `Realtime.disconnect`. */
  disconnect(selector: ConnectionSelector<U>, reason?: string): number
  /** Ask `authorize` again and drop refused subscriptions; see `Realtime.reauthorize`. */
  reauthorize(selector?: ConnectionSelector<U>): Promise<number>
  /** Switch the WebSocket channel on or off at run time. */
  webSocketEnabled: boolean
  /** Who is present on `topic` now, on every node (one entry per tab). */
  presence(topic: string): Promise<PresenceMember[]>
  /** Soft locks: `holder(key)`, and `release(key)` whoever holds it (the holder is told at once). */
  readonly locks: Realtime<Ctx>['locks']
}

export function withApi<F extends object, Ctx, U = User>(fn: F, core: Realtime<Ctx>): F & RealtimeHandle<Ctx, U> {
  const handle = fn as F & RealtimeHandle<Ctx, U>
  Object.defineProperties(handle, {
    core: { value: core },
    publish: { value: core.publish.bind(core) },
    attach: { value: (server: AttachableServer) => (core.attach(server), handle) },
    close: { value: (timeoutMs?: number) => core.close(timeoutMs) },
    stats: { value: () => core.stats() },
    disconnect: { value: core.disconnect.bind(core) },
    reauthorize: { value: core.reauthorize.bind(core) },
    presence: { value: core.presence.bind(core) },
    locks: { value: core.locks },
    webSocketEnabled: {
      get: () => core.webSocketEnabled,
      set: (value: boolean) => { core.webSocketEnabled = value },
      enumerable: true,
    },
  })
  return handle
}
