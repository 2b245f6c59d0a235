/**
 * Recovery, once for every transport: a subscription that names a cursor
 * (`since`) gets exactly the events after it, in order, or `resync` when
 * history no longer reaches back that far. The WebSocket's subscribe, the
 * SSE stream and the long poll all go through `catchUp`, so the guarantee
 * lives here.
 *
 * The order matters: the subscriber joins the topic first and holds live
 * events, then history is read. An event published in between is both held
 * and in history, and goes out once (deduplicated by id in `heldAfter`).
 */
import { encodeEvent } from '../protocol/protocol'
import type { BusEvent } from '../types'

/** What recovery needs of the core. */
export interface History {
  history(topic: string, since: string): Promise<BusEvent[] | null>
  latest(topic: string): Promise<string>
  /** Resolves once every event published so far has been handed to its subscribers. */
  drained(): Promise<void>
}

export interface CaughtUp {
  /** History since the cursor; `null`: it no longer reaches back there (resync). Empty without a cursor. */
  replay: BusEvent[] | null
  /** The topic's position now, when there was no cursor or history fell short. */
  cursor: string | undefined
}

/** Read `topic`'s history since `since` once the subscriber holds live events (see above). */
export async function catchUp(core: History, topic: string, since: string | undefined): Promise<CaughtUp> {
  const replay = since === undefined ? [] : await core.history(topic, since)
  const cursor = since === undefined || replay === null ? await core.latest(topic) : undefined
  // Events published before the history read may still be queued for
  // delivery: let them reach the held list first, where they are deduplicated.
  await core.drained()
  return { replay, cursor }
}

/** Held live events that the replay did not already contain. */
export function heldAfter(replay: readonly BusEvent[], held: readonly BusEvent[]): BusEvent[] {
  if (held.length === 0) return []
  const sent = new Set(replay.map((e) => e.id))
  return held.filter((e) => !sent.has(e.id))
}

/**
 * The encoded replay plus the held events it lacks, or `null` when they would
 * take more than `budget` bytes (then the client is told to resync instead).
 */
export function boundedReplay(
  replay: readonly BusEvent[],
  held: readonly BusEvent[],
  budget: number,
): { events: BusEvent[]; frames: Buffer[] } | null {
  const frames: Buffer[] = []
  let bytes = 0
  for (const event of replay) {
    const frame = encodeEvent(event)
    bytes += frame.length
    if (bytes > budget) return null
    frames.push(frame)
  }
  const events = [...replay, ...heldAfter(replay, held)]
  for (let i = replay.length; i < events.length; i++) frames.push(encodeEvent(events[i]!))
  return { events, frames }
}
