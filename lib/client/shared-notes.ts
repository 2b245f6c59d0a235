/** What the tabs sharing one connection say to each other, and the browser APIs they say it with (structural, for tests). */
import type { Client } from './client'
import type { ClientEvents, ClientState, Diagnosis, RealtimeEvent, Transport } from './types'

/** The part of `navigator.locks` used here. */
export interface LockManagerLike {
  request(name: string, options: { signal?: AbortSignal }, callback: () => Promise<void>): Promise<unknown>
}

export interface ChannelLike {
  onmessage: ((e: { data: unknown }) => void) | null
  postMessage(message: unknown): void
  close(): void
}
export type ChannelCtor = new (name: string) => ChannelLike

/** What the tabs say to each other. `peer` is a page's id: not the tab id, which a duplicated tab shares. */
export type Note =
  // to the leader
  | { t: 'hello'; peer: string; topics: Array<[string, string | null]> }
  | { t: 'sub'; peer: string; topic: string }
  | { t: 'unsub'; peer: string; topic: string }
  | { t: 'bye'; peer: string }
  | { t: 'reconnect' }
  // from the leader
  | { t: 'leader' }
  | { t: 'event'; e: RealtimeEvent }
  | { t: 'cursor'; topic: string; cursor: string }
  | { t: 'state'; state: ClientState; diagnosis: Diagnosis | null; transport?: Transport | null }
  | { t: 'resync'; topic: string }
  | { t: 'error'; error: ClientEvents['error'] }
  | { t: 'withdrawn'; topic: string }
  | { t: 'signed-out'; reason: string }

/** While this tab leads. */
export interface Lead {
  engine: Client
  /** Topic → the pages that want it. */
  interest: Map<string, Set<string>>
  unsubscribe: Map<string, () => void>
  /** Page → the wait on its page lock (granted when the page is gone). */
  watching: Map<string, AbortController>
  stop: Array<() => void>
}

/** Ids remembered per topic to drop what a handover replays twice. */
export const SEEN = 256
