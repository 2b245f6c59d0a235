/**
 * Presence and locks for tabs on the HTTP transports. Such a tab has no
 * channel to the server of its own, so its requests come as
 *
 *   POST <path>/collab?session=S[&ticket=T]   {"op":"presence"|"leave"|"lock"|"unlock", …}   → 202
 *
 * with the same frames a WebSocket sends, and every answer (`present`,
 * `presence`, `lock`, `lock-lost`, errors) comes on the tab's own transport:
 * the SSE stream, or the polling tab's next answers. `S` is the session the
 * transport announced (the stream's first frame, each poll answer): it is
 * unguessable, lives on the node that serves the transport, and is only
 * good for the user who opened it, so a page cannot act as another tab.
 * Origin is required and checked, as for every POST here.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { randomBytes } from 'node:crypto'
import type { Participant } from '../collab/collab'
import { collabOp, isCollabFrame } from '../collab/ops'
import { parseClientFrame } from '../protocol/protocol'
import { readBody } from '../server/diagnostics'
import type { Session } from '../sessions/sessions'
import { userId } from '../users'
import type { MaybePromise, RefusalReason, User } from '../types'
import { fail } from './http-admission'
import type { Core } from './transport'

/** A tab on an HTTP transport, as presence sees it and as session life ends it. */
export type HttpTab = Participant & Session

/** Largest request body: one client frame, `meta` included. */
const MAX_BODY = 16 * 1024

export interface HttpCollabOptions {
  authenticate(ctx: unknown): MaybePromise<{ user: User } | { status: 401 }>
  refused(reason: RefusalReason): void
  /** The body an app's body parser already read, if one did. */
  parsedBody(ctx: unknown): unknown
}

export class HttpCollab {
  private readonly tabs = new Map<string, HttpTab>()
  /** Per tab: the current one-second window and the requests in it (the WebSocket's `maxMessagesPerSecond`). */
  private readonly rate = new WeakMap<HttpTab, { window: number; n: number }>()

  constructor(private readonly core: Core, private readonly options: HttpCollabOptions) {}

  /** A new session id for `tab`, good until `forget`. */
  register(tab: HttpTab): string {
    const id = randomBytes(18).toString('base64url')
    this.tabs.set(id, tab)
    return id
  }

  forget(id: string): void {
    this.tabs.delete(id)
  }

  async handle(req: IncomingMessage, res: ServerResponse, ctx: unknown, url: string): Promise<void> {
    if (req.method !== 'POST') return void fail(res, 405, 'method_not_allowed', 'use POST', { Allow: 'POST' })
    // A browser sends Origin on every POST; the door already refused a foreign one.
    if (req.headers.origin === undefined) {
      this.options.refused('origin')
      return void fail(res, 403, 'origin_required', 'presence and lock requests come from a browser page, which sends Origin')
    }
    const id = new URL(url, 'http://x').searchParams.get('session') ?? ''
    const who = await this.options.authenticate(ctx)
    if ('status' in who) {
      this.options.refused('unauthenticated')
      return void fail(res, 401, 'unauthenticated', 'authentication required')
    }
    const tab = this.tabs.get(id)
    if (tab === undefined || !tab.open) {
      return void fail(res, 404, 'no_session', 'no such session on this server: the transport reconnects and announces a new one')
    }
    if (userId(who.user) !== userId(tab.user)) {
      this.options.refused('forbidden')
      return void fail(res, 403, 'forbidden', 'this session belongs to another user')
    }
    const raw = req.readableEnded ? this.options.parsedBody(ctx) : await readBody(req, MAX_BODY)
    if (raw === null) return void fail(res, 413, 'too_large', `a request is at most ${MAX_BODY} bytes`)
    const text = typeof raw === 'string' ? raw : JSON.stringify(raw)
    const parsed = parseClientFrame(text, this.core.opts.maxTopicLength)
    if (!parsed.ok) return void fail(res, 400, parsed.code, parsed.message)
    if (!isCollabFrame(parsed.frame)) return void fail(res, 400, 'unknown_op', 'only presence, leave, lock and unlock are sent here')
    const window = Math.floor(performance.now() / 1000)
    const r = this.rate.get(tab)
    if (r === undefined || r.window !== window) this.rate.set(tab, { window, n: 1 })
    else if (++r.n > this.core.opts.maxMessagesPerSecond) {
      return void fail(res, 429, 'rate_limited', `more than ${this.core.opts.maxMessagesPerSecond} requests per second`, { 'Retry-After': '1' })
    }
    collabOp(this.core.collab, tab, parsed.frame)
    res.writeHead(202, { 'Cache-Control': 'no-store', 'Content-Length': '0' }).end()
  }
}
