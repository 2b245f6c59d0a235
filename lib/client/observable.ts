/** What every client shows the page (state, diagnosis, listeners), the tab's id, and handlers that may throw. */
import type { ClientEvents, ClientState, Diagnosis, Globals, Transport } from './types'

/** URL-safe characters for the random ids the client makes (tab ids, handshake nonces). */
export const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/** `n` random URL-safe characters. */
export function randomId(g: Globals, n: number): string {
  return Array.from(g.crypto!.getRandomValues(new Uint8Array(n)), (b) => ALPHABET[b & 63]).join('')
}

/** What every client shows the page: its state and diagnosis, and the listeners to tell of changes. */
export abstract class Observable {
  state: ClientState = 'connecting'
  transport: Transport | null = null
  diagnosis: Diagnosis | null = null
  private readonly listeners = new Map<string, Set<(v: never) => void>>()

  on<K extends keyof ClientEvents>(name: K, listener: (value: ClientEvents[K]) => void): () => void {
    let set = this.listeners.get(name)
    if (set === undefined) this.listeners.set(name, (set = new Set()))
    set.add(listener)
    return () => void set.delete(listener)
  }

  /** `transport`: what carries the events in `live` and `fallback`; no state but those two has one. */
  protected set(state: ClientState, transport: Transport | null = null): void {
    const t = state === 'live' || state === 'fallback' ? transport ?? this.transport : null
    if (t !== this.transport) {
      this.transport = t
      this.emit('transport', t)
    }
    if (state === this.state) return
    this.state = state
    this.emit('state', state)
  }

  /** A new diagnosis (told once per change). */
  protected diagnosed(d: Diagnosis | null): void {
    const same = (a: Diagnosis | null | undefined): string => `${a?.cause} ${a?.detail} ${a?.stepDown?.from} ${a?.stepDown?.cause}`
    if (same(d) === same(this.diagnosis)) return
    this.diagnosis = d
    this.emit('diagnosis', d)
  }

  protected emit<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    for (const fn of this.listeners.get(name) ?? []) call(fn as (v: ClientEvents[K]) => void, value)
  }
}

const TAB_KEY = 'cms-realtime.tab'

/** This tab's id: sessionStorage is per tab and survives a reload (so the tab takes its locks back). */
export function tabId(g: Globals): string {
  const fresh = randomId(g, 16)
  try {
    const kept = g.sessionStorage?.getItem(TAB_KEY)
    if (kept != null && /^[A-Za-z0-9_-]{8,64}$/.test(kept)) return kept
    g.sessionStorage?.setItem(TAB_KEY, fresh)
  } catch {
    // storage blocked (privacy settings): a fresh id per page load
  }
  return fresh
}

/** A throwing handler must not stop the others, nor the client: report it asynchronously. */
export function call<V>(fn: (v: V) => void, v: V): void {
  try {
    fn(v)
  } catch (err) {
    setTimeout(() => {
      throw err
    })
  }
}
