/**
 * Session life across nodes. A logout, a blocked user or a role change is
 * handled by whichever node took the request, but the user's connections
 * may be on any node: `rt.disconnect` and `rt.reauthorize` with a selector
 * that is data (not a function) are also sent to every other node sharing
 * the bus, on a topic of their own that no client may subscribe to. Peers:
 * Socket.IO's `disconnectSockets()` through its adapter, Centrifugo's
 * server API (which acts on every node).
 */
import { randomUUID } from 'node:crypto'
import type { Bus, ConnectionSelector } from '../types'
import type { Sessions } from './sessions'

/** One of the library's own topics (see `reserved`): no client may hold it. */
export const CONTROL_TOPIC = 'cms-realtime:control'

export type DataSelector = Exclude<ConnectionSelector, (user: never) => boolean>

export interface ControlMessage {
  /** The node that sent it (it acted already). */
  from: string
  op: 'disconnect' | 'reauthorize'
  /** Absent: every connection (`reauthorize()`). */
  selector?: DataSelector
  reason?: string
}

/** A control message from the bus, or undefined when it is not one (nothing on this topic is trusted blindly). */
export function parseControl(data: string): ControlMessage | undefined {
  let m: unknown
  try {
    m = JSON.parse(data)
  } catch {
    return undefined
  }
  if (typeof m !== 'object' || m === null) return undefined
  const { from, op, selector, reason } = m as Record<string, unknown>
  if (typeof from !== 'string' || (op !== 'disconnect' && op !== 'reauthorize')) return undefined
  if (selector === undefined ? op === 'disconnect' : !dataSelector(selector)) return undefined
  return { from, op, selector: selector as DataSelector | undefined, reason: typeof reason === 'string' ? reason : undefined }
}

/** `{ user }`, `{ topic }` or `{ match }` of the right types: anything else from the wire is dropped, not thrown at. */
function dataSelector(s: unknown): boolean {
  if (typeof s !== 'object' || s === null) return false
  const { user, topic, match } = s as Record<string, unknown>
  if (user !== undefined) return typeof user === 'string' || typeof user === 'number'
  if (topic !== undefined) return typeof topic === 'string'
  return typeof match === 'object' && match !== null && Object.keys(match).length > 0
}

export class Control {
  /** This node, in its messages. */
  private readonly node = randomUUID()

  constructor(
    private readonly bus: Bus,
    private readonly sessions: Sessions,
    /** Is the bus shared with other nodes (given in the options, not this node's own)? */
    private readonly shared: boolean,
    private readonly call: (fn: () => unknown) => Promise<void>,
    private readonly error: (where: string, err: unknown) => void,
  ) {
    if (shared) void call(() => bus.subscribe(CONTROL_TOPIC))
  }

  disconnect(selector: ConnectionSelector, reason: string): number {
    const n = this.sessions.disconnect(selector, reason)
    if (typeof selector !== 'function') this.send({ from: this.node, op: 'disconnect', selector, reason })
    return n
  }

  reauthorize(selector?: ConnectionSelector): Promise<number> {
    const n = this.sessions.reauthorize(selector)
    if (typeof selector !== 'function') this.send({ from: this.node, op: 'reauthorize', selector })
    return n
  }

  /** A message on CONTROL_TOPIC, from the bus: act on it unless this node sent it. */
  receive(data: string): void {
    const m = parseControl(data)
    if (m === undefined || m.from === this.node) return
    if (m.op === 'disconnect') this.sessions.disconnect(m.selector!, m.reason ?? 'signed out')
    else this.sessions.reauthorize(m.selector).catch((err: unknown) => this.error('reauthorize', err))
  }

  /**
   * Messages of other nodes may have been lost (the bus had a hole on the
   * control topic): re-check every subscription now. A lost disconnect is
   * caught by `revalidate`, or the user's next check.
   */
  missed(): void {
    this.sessions.reauthorize().catch((err: unknown) => this.error('reauthorize', err))
  }

  private send(m: ControlMessage): void {
    if (this.shared) void this.call(() => this.bus.publish(CONTROL_TOPIC, 'control', JSON.stringify(m)))
  }
}
