/**
 * Topic → connections, and the fan-out of one encoded frame to all of them.
 * Publishing costs in proportion to the topic's subscribers, not to all clients.
 */
import type { BusEvent } from '../types'

/** Anything that receives events of the topics it joined: a WebSocket connection, an SSE stream. */
export interface Subscriber {
  /** `frame` is the WebSocket frame of `event`, encoded once for every subscriber. */
  deliver(event: BusEvent, frame: Buffer): void
  /**
   * Optional fast path for consecutive events of one topic: `wire` is
   * `frames` as complete WebSocket frames in one buffer, shared by every
   * subscriber. Without it, `deliver` is called per event.
   */
  deliverBatch?(events: readonly BusEvent[], frames: readonly Buffer[], wire: Buffer): void
  /** Tell the client that `topic` has events it will never receive: refetch. */
  resync(topic: string): void
}

export class Hub {
  private readonly topics = new Map<string, Set<Subscriber>>()
  readonly connections = new Set<Subscriber>()
  subscriptions = 0

  /** Returns true when `conn` is the first local subscriber (the bus must subscribe). */
  join(conn: Subscriber, topic: string): boolean {
    let set = this.topics.get(topic)
    const first = set === undefined
    if (set === undefined) {
      set = new Set()
      this.topics.set(topic, set)
    }
    if (!set.has(conn)) {
      set.add(conn)
      this.subscriptions++
    }
    return first
  }

  /** Returns true when `conn` was the last local subscriber (the bus may unsubscribe). */
  leave(conn: Subscriber, topic: string): boolean {
    const set = this.topics.get(topic)
    if (set === undefined || !set.delete(conn)) return false
    this.subscriptions--
    if (set.size > 0) return false
    this.topics.delete(topic)
    return true
  }

  subscribers(topic: string): ReadonlySet<Subscriber> | undefined {
    return this.topics.get(topic)
  }

  get topicCount(): number {
    return this.topics.size
  }
}
