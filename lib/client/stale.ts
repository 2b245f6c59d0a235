/**
 * The stale-edit warning, client side: "changed by Ben since you opened it".
 * Events that carry the item's `revision` (and `updatedBy`) tell an open
 * editor at once; the server's `staleEdit` check on save catches the rest
 * (the socket was down, the change came through another API).
 */
import type { RealtimeClient, RealtimeEvent } from './client'

export interface StaleChange {
  revision: number
  by: string | undefined
  event: RealtimeEvent
}

export interface RevisionWatch {
  /** This editor saved: its own change is now the base (call it with the revision the save returned). */
  saved(revision: number): void
  stop(): void
}

/**
 * Watch `topic` for changes to the item an editor opened at `revision`:
 * `onStale` runs for each event whose `data.revision` is newer, except the
 * editor's own (`data.updatedBy === self`). `match` picks the item's events
 * on a topic that carries several (`(d) => d.item?.id === 7`).
 */
export function watchRevision(
  rt: RealtimeClient,
  topic: string,
  opened: { revision: number; self?: string; match?: (data: Record<string, unknown>) => boolean },
  onStale: (change: StaleChange) => void,
): RevisionWatch {
  let base = opened.revision
  const off = rt.subscribe<Record<string, unknown>>(topic, (event) => {
    const d = event.data
    if (d === null || typeof d !== 'object' || (opened.match !== undefined && !opened.match(d))) return
    const revision = d.revision
    if (typeof revision !== 'number' || revision <= base) return
    const by = typeof d.updatedBy === 'string' ? d.updatedBy : undefined
    if (by !== undefined && by === opened.self) {
      base = revision
      return
    }
    onStale({ revision, by, event })
  })
  return {
    saved(revision) { if (revision > base) base = revision },
    stop: off,
  }
}
