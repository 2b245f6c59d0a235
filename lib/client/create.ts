/**
 * `createClient`: one connection per browser where the tabs can share it
 * (Web Locks and BroadcastChannel, cookie credentials), else one per tab.
 */
import { Client } from './client'
import { SharedClient } from './shared'
import type { ChannelCtor, LockManagerLike } from './shared-notes'
import type { ClientOptions, RealtimeClient } from './types'

export function createClient(options: ClientOptions): RealtimeClient {
  const g = globalThis as { navigator?: { locks?: LockManagerLike }; BroadcastChannel?: ChannelCtor; document?: unknown }
  const locks = g.navigator?.locks
  // By default only with cookie credentials, which every tab of the origin
  // shares: with a `token` hook each tab may be signed in as someone else
  // (a token in sessionStorage), and one tab's connection must not carry
  // another user's events. `share: true` says the tabs are one user.
  const share = options.share ?? (g.document !== undefined && options.token === undefined)
  if (share && locks !== undefined && g.BroadcastChannel !== undefined) {
    try {
      return new SharedClient(options, locks, g.BroadcastChannel)
    } catch {
      // a context that refuses the channel (an opaque origin): a connection of its own
    }
  }
  return new Client(options)
}
