/**
 * What the two HTTP transports (the SSE stream and the long poll) share
 * before a byte of their answer: the query (`topics`, `since`), and the
 * admission (authentication, shutdown, the connection limits, registration
 * with session life before `authorize` is awaited, per-topic authorisation).
 * Each rule lives here once, so a poll is refused exactly when a stream is.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { validTopic } from '../protocol/protocol'
import { decodeCursors } from '../client/cursor-vector'
import { closing } from '../server/access'
import { sendJson } from '../server/http'
import type { Admission, Session } from '../sessions/sessions'
import type { MaybePromise, RefusalReason, User } from '../types'
import type { Core } from './transport'

export interface HttpTransportOptions {
  /** Who is this? A refusal status when unknown. */
  authenticate(ctx: unknown): MaybePromise<{ user: User } | { status: 401 }>
  /** Count a refusal in `stats().refusals`. */
  refused(reason: RefusalReason): void
  /** The request's admission, begun when it arrived (see Sessions.begin), and its end. */
  admission(req: IncomingMessage): Admission
  settle(req: IncomingMessage): void
  /** The server is shutting down: nothing opens. */
  closing(): boolean
  /** Make room for `user` before the connection limits are checked (a polling user's idle tabs). */
  room?(user: User): void
}

export interface TopicsQuery {
  topics: string[]
  /** One cursor per topic; `undefined`: start from now. */
  since: Array<string | undefined>
}

/** `?topics=a,b&since=<cursor vector>`; `vector` is where the cursors come from (`Last-Event-ID` wins for SSE). Answers 400 itself. */
export function topicsQuery(res: ServerResponse, core: Core, params: URLSearchParams, vector: string | null): TopicsQuery | null {
  const opts = core.opts
  const list = params.get('topics')
  if (list === null || list === '') return fail(res, 400, 'bad_topics', 'give the topics as ?topics=a,b')
  const topics = list.split(',')
  if (topics.length > opts.maxTopicsPerConnection) {
    return fail(res, 400, 'too_many_topics', `a request may hold at most ${opts.maxTopicsPerConnection} topics`)
  }
  const bad = topics.find((t): boolean => !validTopic(t, opts.maxTopicLength))
  if (bad !== undefined) {
    return fail(res, 400, 'bad_topics', `invalid topic ${JSON.stringify(bad.slice(0, opts.maxTopicLength))}: ` +
      `1-${opts.maxTopicLength} characters of A-Z a-z 0-9 _ . : - / @`)
  }
  if (new Set(topics).size !== topics.length) return fail(res, 400, 'bad_topics', 'a topic is listed twice')
  const since = vector === null ? topics.map(() => undefined) : decodeCursors(vector, topics.length)
  if (since === null) {
    return fail(res, 400, 'bad_cursor', 'the cursor (Last-Event-ID or ?since=) must hold one percent-encoded cursor per topic, joined by ","')
  }
  return { topics, since }
}

/** A session of an HTTP transport, as admission sees it. */
export interface HttpSession extends Session {
  readonly isEnded: boolean
  /** Was `topic` taken away (`reauthorize`) while the request was being admitted? */
  withdrawn(topic: string): boolean
  /** Leave every topic and registry; idempotent. */
  cleanup(): void
}

/**
 * Admit `req` for `topics`: the session `make` builds, registered and
 * authorised, or `null` once the refusal is answered (or the client left).
 * Registered before `authorize` is awaited, as a WebSocket's pending
 * subscriptions are: a `reauthorize` meanwhile withdraws its topics and a
 * `disconnect` ends it, so an answer that predates the change lets nothing in.
 */
export async function admit<S extends HttpSession>(
  core: Core, options: HttpTransportOptions, req: IncomingMessage, res: ServerResponse, ctx: unknown, topics: readonly string[],
  make: (user: User) => S,
): Promise<S | null> {
  // Begun when the request arrived: a logout since is replayed on this session when it is added.
  const admission = options.admission(req)
  try {
    const who = await options.authenticate(ctx)
    if ('status' in who) {
      options.refused('unauthenticated')
      return fail(res, 401, 'unauthenticated', 'authentication required')
    }
    if (res.destroyed || req.socket.destroyed) return null
    if (options.closing()) return fail(res, 503, 'shutting_down', closing().message)
    const sessions = core.sessions
    options.room?.(who.user)
    const full = sessions.full(who.user)
    if (full !== null) {
      options.refused(full.reason)
      return fail(res, full.status, full.reason, full.message, full.headers)
    }
    const session = make(who.user)
    if (!sessions.add(session, admission)) return ended(res, options)
    // A client that leaves while `authorize` is awaited frees its slot at once (after that, the transport's own rules).
    const gone = (): void => session.cleanup()
    res.once('close', gone)
    try {
      const verdicts = await Promise.all(topics.map((topic) => sessions.allowed(who.user, topic)))
      if (session.isEnded) return ended(res, options)
      const forbidden = topics.filter((t, i) => !verdicts[i] || session.withdrawn(t))
      if (forbidden.length > 0) {
        session.cleanup()
        options.refused('forbidden')
        return fail(res, 403, 'forbidden', `not allowed to subscribe to ${forbidden.join(', ')}`)
      }
      // The client may have gone while we awaited; 'close' would not come again.
      if (res.destroyed || req.socket.destroyed) {
        session.cleanup()
        return null
      }
      return session
    } finally {
      res.off('close', gone)
    }
  } finally {
    options.settle(req)
  }
}

/** The session ended (a logout) while the request was being admitted: what a signed-out client gets. */
function ended(res: ServerResponse, options: HttpTransportOptions): null {
  options.refused('unauthenticated')
  return fail(res, 401, 'unauthenticated', 'the session ended')
}

export function fail(res: ServerResponse, status: number, error: string, reason: string, headers: Record<string, string> = {}): null {
  sendJson(res, status, { error, reason }, headers)
  return null
}
