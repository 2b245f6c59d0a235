/**
 * Long polling: the last push transport, for networks that pass neither a
 * WebSocket nor a stream (a proxy that compresses or buffers responses
 * until they end, an antivirus shield, an HTTP/1.0 hop). Every answer is a
 * complete response, so every intermediary passes it.
 *
 *   GET <path>/poll?topics=a,b[&since=V][&session=S][&ticket=T]
 *   → 200 {"cursor": V', "session": S, "frames": [ …the WebSocket's frames, in order… ]}
 *
 * A poll is held until something waits for it (an event, a `resync`, a
 * presence frame, the end of the session), then answered at once; after
 * `pollHoldMs` it is answered with no frames. The client polls again at once
 * with `cursor` and `session`.
 *
 * The session is a polling tab (poll-tab.ts) on the node that answered:
 * subscribed like a socket, it keeps what arrives between two polls, so a
 * burst reaches a poller whole (SignalR and Socket.IO keep such a per-client
 * queue too). The cursors make it safe without sticky sessions: a poll that
 * reaches another node, or a restarted one, or names cursors the tab is not
 * at (an answer lost on the way), starts a new tab that catches up from
 * history through delivery/recovery.ts, the guarantee every transport
 * shares: exactly once, in order, or `resync`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Core } from './transport'
import { userId } from '../users'
import type { User } from '../types'
import { admit, fail, topicsQuery, type HttpTransportOptions } from './http-admission'
import type { HttpCollab } from './http-collab'
import { PollTab } from './poll-tab'

export interface PollOptions extends HttpTransportOptions {
  /** Longest a poll is held before it is answered empty (under common proxy read timeouts). */
  holdMs: number
  /**
   * A fresh ticket for the next poll when this one came with one, minted
   * when the answer goes (a token-signed-in client needs no round trip per
   * poll; each poll is still authenticated, so an expired token ends it).
   */
  nextTicket(req: IncomingMessage): (() => string) | undefined
}

/** A polling tab that sends no poll for this long (or its hold limit, if shorter) is gone; its presence and locks keep their graces. */
const TAB_IDLE_MS = 15_000

export class Polls {
  /** Polling tabs served here, by session id. */
  readonly tabs = new Map<string, PollTab>()

  constructor(private readonly core: Core, private readonly options: PollOptions, private readonly collab: HttpCollab) {}

  /** Polls held now. */
  get held(): number {
    let n = 0
    for (const tab of this.tabs.values()) if (tab.reading) n++
    return n
  }

  /** Answer `GET <path>/poll`: a 4xx for bad input, otherwise one JSON answer once something waits or the hold ends. */
  async handle(req: IncomingMessage, res: ServerResponse, ctx: unknown, url: string): Promise<void> {
    if ((req.method ?? 'GET') !== 'GET') return void fail(res, 405, 'method_not_allowed', 'use GET', { Allow: 'GET' })
    const params = new URL(url, 'http://x').searchParams
    const vector = params.get('since')
    const query = topicsQuery(res, this.core, params, vector)
    if (query === null) return
    const ticket = this.options.nextTicket(req)
    const known = this.tabs.get(params.get('session') ?? '')
    if (known !== undefined && known.continues(query.topics, vector ?? '')) {
      // Each poll is authenticated, as each stream is; its topics were authorised when the tab began.
      const who = await this.options.authenticate(ctx)
      this.options.settle(req)
      if ('status' in who || userId(who.user) !== userId(known.user) || known.isEnded) {
        if ('status' in who) known.end() // signed out: the tab goes with its session
        this.options.refused('unauthenticated')
        return void fail(res, 401, 'unauthenticated', 'authentication required')
      }
      return known.read(res, this.options.holdMs, ticket)
    }
    // A poll that does not continue its tab (another node's, or an answer lost on the way) starts over from its cursors.
    known?.end()
    const tab = await admit(this.core, { ...this.options, room: (user) => this.evictIdle(user) }, req, res, ctx, query.topics, (user) => this.open(user, query.topics, query.since))
    if (tab === null) return
    tab.read(res, this.options.holdMs, ticket)
    await tab.start()
  }

  private open(user: User, topics: string[], since: Array<string | undefined>): PollTab {
    const tab = new PollTab(user, topics, since, this.core, Math.min(TAB_IDLE_MS, this.options.holdMs), (t) => {
      this.tabs.delete(t.id)
      this.collab.forget(t.id)
    })
    tab.id = this.collab.register(tab)
    this.tabs.set(tab.id, tab)
    return tab
  }

  /**
   * A user at `maxConnectionsPerUser` because of tabs nobody polls any more
   * (a client that lost its session id, a reload) gets room: the oldest such
   * tab ends first, so only tabs in use count against the limit.
   */
  private evictIdle(user: User): void {
    const id = userId(user)
    if (id === undefined || this.core.sessions.admits(user)) return
    for (const tab of this.tabs.values()) {
      if (userId(tab.user) === id && !tab.reading) return tab.end()
    }
  }

  /**
   * Answer every held poll with a `closed` frame and end every tab (the
   * server shuts down, 1001, or the channel was switched off, 4000): the
   * client reads config again and polls, maybe another node, from its cursors.
   */
  closeAll(code: number, reason: string): void {
    for (const tab of [...this.tabs.values()]) tab.close(code, reason)
  }
}
