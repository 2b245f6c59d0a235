/**
 * A polling tab's presence and locks, which must outlive each single poll:
 * the participant collaboration talks to while the tab keeps polling. Its
 * frames wait in a bounded outbox for the tab's next poll (or go straight
 * into the one held now). A tab that stops polling for `idleMs` is gone, as
 * a WebSocket that drops: its presence and locks then keep their graces.
 * It is a session (so `reauthorize` and `disconnect` reach what it holds
 * between two polls) that is not counted as a connection: its polls are.
 */
import type { ServerFrame } from '../client/wire'
import type { User } from '../types'
import type { Core } from './transport'

/** Frames kept for a tab between polls; past this it is cut off like a slow consumer (its presence keeps its grace). */
const MAX_OUTBOX = 512

export interface TabPoll {
  /** Take a frame into the held poll's answer; false when it is answered already. */
  offer(json: string): boolean
}

export class PollTab {
  readonly counted = false
  id = ''
  private readonly outbox: string[] = []
  private poll: TabPoll | undefined
  private timer: NodeJS.Timeout | undefined
  private ended = false

  constructor(readonly user: User, private readonly core: Core, private readonly idleMs: number, private readonly onGone: (tab: PollTab) => void) {
    this.idle()
  }

  get open(): boolean {
    return !this.ended
  }

  send(frame: ServerFrame): void {
    this.push(JSON.stringify(frame))
  }

  sendEncoded(frame: Buffer): void {
    this.push(frame.toString())
  }

  /** A poll of this tab is held: it takes what waited. */
  attach(poll: TabPoll): string[] {
    clearTimeout(this.timer)
    this.poll = poll
    return this.outbox.splice(0)
  }

  /** The poll was answered (or its client left): the tab has `idleMs` to poll again. */
  detach(poll: TabPoll): void {
    if (this.poll !== poll) return
    this.poll = undefined
    this.idle()
  }

  heldTopics(): readonly string[] {
    return this.core.collab.topicsOf(this)
  }

  /** Access withdrawn: out of presence and the lock there, and told so (a subscribed topic's poll says it too; the client takes it once). */
  revoke(topic: string): void {
    this.core.collab.revoked(this, topic)
    this.send({ op: 'unsubscribed', topic, reason: 'forbidden' })
  }

  /** The held poll (a session itself) tells the client; the tab just goes. */
  endSession(): void {
    this.end()
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    clearTimeout(this.timer)
    this.outbox.length = 0
    this.core.collab.gone(this)
    this.core.sessions.remove(this)
    this.onGone(this)
  }

  private push(json: string): void {
    if (this.ended || this.poll?.offer(json) === true) return
    this.outbox.push(json)
    if (this.outbox.length > MAX_OUTBOX) {
      this.core.counters.slowConsumersClosed++
      this.end()
    }
  }

  private idle(): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.end(), this.idleMs)
    this.timer.unref()
  }
}
