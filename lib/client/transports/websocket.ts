/**
 * The client's WebSocket transport: one socket, its open timeout and its
 * heartbeat (after a quiet `heartbeatMs` the client pings; no frame within
 * `heartbeatTimeoutMs` means a dead link, as a proxy that silently drops
 * idle upgraded connections leaves it). Every way it ends is one `close`
 * call; after `drop()` it says nothing more.
 */
import { encodeCursors } from '../cursor-vector'
import type { WebSocketCtor, WebSocketLike } from '../types'
import { PROTOCOL } from '../wire'

export interface SocketEvents {
  open(): void
  frame(data: unknown): void
  /** It ended by itself: `opened` says whether it ever opened; `code` 1006 for a timeout or a dead link. */
  close(e: { opened: boolean; code: number; reason: string }): void
}

export interface SocketTiming {
  openTimeoutMs: number
  heartbeatMs: number
  heartbeatTimeoutMs: number
}

export class Socket {
  opened = false
  private readonly ws: WebSocketLike
  private readonly openTimer: ReturnType<typeof setTimeout>
  private beat: ReturnType<typeof setTimeout> | undefined

  constructor(WS: WebSocketCtor, url: string, private readonly on: SocketEvents, private readonly t: SocketTiming) {
    const ws = new WS(url, PROTOCOL)
    this.ws = ws
    this.openTimer = setTimeout(() => this.end(false), t.openTimeoutMs)
    ws.onopen = () => {
      clearTimeout(this.openTimer)
      this.opened = true
      this.alive()
      on.open()
    }
    ws.onmessage = (e) => {
      this.alive()
      on.frame(e.data)
    }
    ws.onclose = (e) => {
      const opened = this.opened
      this.drop()
      on.close({ opened, code: e.code, reason: e.reason ?? '' })
    }
    ws.onerror = () => {} // a close follows
  }

  send(frame: object): void {
    if (this.opened) this.ws.send(JSON.stringify(frame))
  }

  /** Forget the socket without waiting for its close handshake. */
  drop(): void {
    const ws = this.ws
    ws.onopen = ws.onmessage = ws.onclose = null
    clearTimeout(this.openTimer)
    clearTimeout(this.beat)
    this.opened = false
    try {
      ws.close(1000)
    } catch {
      // not yet open in some browsers: nothing to close
    }
  }

  private end(opened: boolean): void {
    this.drop()
    this.on.close({ opened, code: 1006, reason: opened ? 'heartbeat lost' : 'did not open in time' })
  }

  private alive(): void {
    clearTimeout(this.beat)
    this.beat = setTimeout(() => {
      this.send({ op: 'ping' })
      this.beat = setTimeout(() => this.end(true), this.t.heartbeatTimeoutMs)
    }, this.t.heartbeatMs)
  }
}

/**
 * Name the first subscriptions on the upgrade URL (`?topics=&since=`), as
 * many as keep it under about 2 KB for any proxy; the rest go as frames.
 * Returns the topics named.
 */
export function handshakeTopics(url: URL, topics: readonly string[], cursors: ReadonlyMap<string, string>): Set<string> {
  const early = new Set<string>()
  let length = 0
  for (const topic of topics) {
    length += topic.length + (cursors.get(topic)?.length ?? 0) * 1.5 + 2
    if (length > 2000) break
    early.add(topic)
  }
  if (early.size === 0) return early
  const named = [...early]
  url.searchParams.set('topics', named.join(','))
  if (named.some((t) => cursors.has(t))) url.searchParams.set('since', encodeCursors(named.map((t) => cursors.get(t))))
  return early
}
