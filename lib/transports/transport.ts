/**
 * What every transport (the WebSocket connection, the SSE stream) gets from
 * the server: the hub and the bus behind `join`/`leave`, history for
 * recovery, the delivery slice, session life and collaboration. A transport
 * talks to nothing else, so each guarantee lives once, behind this.
 */
import type { Duplex } from 'node:stream'
import type { Collab } from '../collab/collab'
import type { Counters } from '../counters'
import type { Subscriber } from '../delivery/hub'
import type { ResolvedOptions } from '../options'
import type { Sessions } from '../sessions/sessions'
import type { BusEvent } from '../types'

export type { Counters } from '../counters'

/** What a connection needs from the core. */
export interface Core {
  readonly opts: ResolvedOptions<never>
  readonly counters: Counters
  /** Add `sub` to `topic` (and the bus, for the topic's first local subscriber). */
  join(sub: Subscriber, topic: string): void
  leave(sub: Subscriber, topic: string): void
  history(topic: string, since: string): Promise<BusEvent[] | null>
  latest(topic: string): Promise<string>
  /** Resolves once every event published so far has been handed to its subscribers (delivery is paced). */
  drained(): Promise<void>
  /** Within a delivery slice, hold `socket`'s writes until the slice ends (see Delivery.hold). */
  hold(socket: Duplex, flushAt: number, bytes: number): void
  /** Within a delivery slice, take `wire` to write with the slice's other frames for `socket`; false: write it now (see Delivery.gather). */
  gather(socket: Duplex, wire: Buffer, flushAt: number): boolean
  /** Write what is gathered for `socket` now. */
  flush(socket: Duplex): void
  /** The connection's socket closed and it has left every topic. */
  closed(conn: Subscriber): void
  /** Every open connection and stream, for session life and per-user limits. */
  readonly sessions: Sessions
  /** Presence and soft locks. */
  readonly collab: Collab
}
