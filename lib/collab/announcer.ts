/**
 * `presence` frames: a change marks its topic dirty, and every 10 ms the
 * dirty topics are re-read once and their frame sent to the tabs present
 * here, only when it changed (a joiner gets it anyway, once).
 */
import type { LockHolder, PresenceMember } from '../client/wire'
import { encode } from '../protocol/protocol'
import type { Participant } from './participant'

export class Announcer {
  /** The last frame sent per topic. */
  private readonly last = new Map<string, string>()
  /** Joiners that need the current frame even if it did not change. */
  private readonly fresh = new Map<string, Set<Participant>>()
  private readonly dirty = new Set<string>()
  private flushing: NodeJS.Timeout | undefined

  constructor(private readonly refresh: (name: string) => void) {}

  /** Re-read `name` soon, coalesced with every other change in the next 10 ms. */
  touch(name: string): void {
    this.dirty.add(name)
    if (this.flushing !== undefined) return
    this.flushing = setTimeout(() => {
      this.flushing = undefined
      const names = [...this.dirty]
      this.dirty.clear()
      for (const n of names) this.refresh(n)
    }, 10)
  }

  /** `p` joined `topic`: its next frame goes to `p` even if nothing changed. */
  welcome(topic: string, p: Participant): void {
    let fresh = this.fresh.get(topic)
    if (fresh === undefined) this.fresh.set(topic, (fresh = new Set()))
    fresh.add(p)
  }

  /** The frame for `name` as re-read: to every watcher if it changed, else to the joiners only. */
  announce(name: string, watching: ReadonlySet<Participant>, members: PresenceMember[], lock: LockHolder | null): void {
    const fresh = this.fresh.get(name)
    this.fresh.delete(name)
    if (watching.size === 0) {
      this.last.delete(name)
      return
    }
    const text = encode({ op: 'presence', topic: name, members, lock })
    const changed = text !== this.last.get(name)
    this.last.set(name, text)
    const frame = Buffer.from(text)
    for (const p of watching) if (changed || fresh?.has(p)) p.sendEncoded(frame)
  }

  close(): void {
    clearTimeout(this.flushing)
  }
}
