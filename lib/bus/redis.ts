/**
 * The Redis bus (`cms-realtime/redis`): history in one Redis Stream per
 * topic, whose ids are the cursors, and live delivery between nodes through
 * pub/sub on the topics this node's clients hold. Each topic's live sequence
 * goes through a `Chain` (redis-chain.ts): exactly once, in order, or
 * `resync`, whatever Redis or the network does. See docs/redis.md.
 */
import { randomBytes } from 'node:crypto'
import debug from 'debug'
import type { Bus, BusEvent } from '../types'
import type { CollabStore } from '../collab/store'
import { RedisCollabStore } from '../collab/redis-store'
import { Chain, compareIds, HighWater, type Entry, type TopicState } from './redis-chain'
import { resolveRedisOptions, type RedisBusOptions, type RedisClientLike, type RedisConnectionLike } from './redis-options'
import { Liveness } from './redis-liveness'
import { bounded, closedError, coalesced, CURSOR, nonce, parseMessage, streamEntries, type RedisBusStats } from './redis-wire'
import { CHECK, HISTORY, LATEST, PUBLISH, Scripts } from './redis-scripts'

export type { RedisBusOptions, RedisClientLike, RedisConnectionLike } from './redis-options'
export { parseMessage, type RedisBusStats } from './redis-wire'

const log = debug('cms-realtime:redis')

/** The resolved options, as read-only fields (set in the constructor). */
export interface RedisBus extends Readonly<Required<RedisBusOptions>> {}

export class RedisBus implements Bus {
  /** The bus's own connections: commands, and pub/sub. The client you pass is only their template. */
  private readonly cmd: RedisConnectionLike
  private readonly sub: RedisConnectionLike
  private readonly topics = new Map<string, TopicState>()
  /** Topics published without Redis: a gap marker goes into their stream first thing on recovery. */
  private readonly dirty = new Set<string>()
  /** Local cursors (during an outage) carry this: foreign to `history`, so they mean resync. */
  private readonly nodeEpoch = randomBytes(4).toString('hex')
  private readonly live: Liveness
  private readonly scripts: Scripts
  private localSeq = 0
  private subLost = false
  /** A connection came (back) up: on recovery, look for streams rolled back behind what this node saw. */
  private reconnected = false
  private up = false
  private readonly connecting: Promise<unknown>
  private listener: (event: BusEvent) => void = () => {}
  private resyncListener: (topic: string) => void = () => {}
  private closed = false
  private readonly counts = { localPublishes: 0, fills: 0, resyncs: 0, rejectedMessages: 0, rollbacks: 0 }
  /** Per topic, the newest id this node has seen: a stream found behind it was rolled back (redis-scripts.ts ROLLED_BACK). */
  private readonly seen = new HighWater()
  private readonly onError = (err: Error): void => log('redis error: %s', err.message)

  constructor(private readonly client: RedisClientLike, options: RedisBusOptions = {}) {
    if (typeof client?.duplicate !== 'function') {
      throw new TypeError('cms-realtime: RedisBus needs a node-redis client (createClient() from the "redis" package)')
    }
    Object.assign(this, resolveRedisOptions(options))
    const bus = this
    this.live = new Liveness({
      get cmd() { return bus.cmd },
      get closed() { return bus.closed },
      get dirty() { return bus.dirty.size > 0 },
      recover: () => this.recover(),
      catchUp: () => { for (const state of this.topics.values()) if (!state.local) state.chain.catchUp() },
    }, `${this.keyPrefix}beat:${this.nodeEpoch}`, this.commandTimeoutMs, this.livenessMs)
    this.scripts = new Scripts(() => this.cmd, this.live, this.keyPrefix)
    // An 'error' event without a listener would crash the app during an outage.
    client.on('error', this.onError)
    // Our own connections, with a reconnect delay we choose: node-redis's
    // default backoff left clients without `resync` for up to 14 s after
    // Redis came back.
    const max = this.maxReconnectDelayMs
    const socket = { ...client.options?.socket, reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, max) }
    this.cmd = client.duplicate({ socket })
    this.sub = client.duplicate({ socket })
    for (const c of [this.cmd, this.sub]) c.on('error', this.onError)
    this.sub.on('reconnecting', () => { this.subLost = true })
    for (const c of [this.cmd, this.sub]) c.on('ready', () => { this.reconnected = true; this.recover() })
    this.connecting = Promise.all([
      this.cmd.connect(),
      this.sub.connect().then(() => this.sub.subscribe(this.live.beatChannel, this.live.echo)),
    ]).catch((err: Error) => log('connect failed: %s', err.message))
  }

  /** Both connections are up and answering. */
  get connected(): boolean { return this.cmd.isReady && this.sub.isReady && !this.live.stalled }

  /** Presence and soft locks in Redis, on this bus's connections (one store per bus). */
  collabStore(): CollabStore {
    return (this.collab ??= new RedisCollabStore({
      prefix: this.keyPrefix,
      command: (args) => this.started().then(() => this.live.send((timed) => timed(this.cmd.sendCommand(args)))),
      subscribe: (channel, listener) => this.connecting.then(() => this.sub.subscribe(channel, listener)),
      unsubscribe: (channel, listener) => this.sub.unsubscribe(channel, listener),
    }))
  }

  private collab: RedisCollabStore | undefined
  stats(): RedisBusStats {
    return { connected: this.connected, ...this.counts, timeouts: this.live.timeouts, queued: this.live.queued, lateReplies: this.live.lateReplies }
  }

  /**
   * Through Redis when the script runs within `commandTimeoutMs` of being
   * sent; otherwise to this node's subscribers only, with a local cursor (a
   * client recovering with it gets `resync`). Never rejects because of
   * Redis; waits for room in flight, then at most `commandTimeoutMs` after
   * Redis last answered (docs/redis.md). Rejects once the bus is closed, also
   * while the event is on its way: a node going away can neither deliver it
   * locally nor mark the hole for others later, so the caller learns it may be lost.
   */
  async publish(topic: string, type: string, data: string): Promise<BusEvent> {
    if (this.closed) throw closedError(topic)
    await this.started()
    if (this.closed) throw closedError(topic)
    if (!this.cmd.isReady || this.live.stalled) return this.publishLocally(topic, type, data)
    let reply: string[]
    let gap: boolean | undefined
    try {
      // Args made when it is sent: its deadline counts from then, not from when it began to wait for room,
      // and only the first publish sent after an outage writes the gap marker (a failure marks the topic again).
      reply = await this.scripts.run(PUBLISH, topic, () => this.publishArgs(topic, type, data, (gap ??= this.dirty.delete(topic)))) as string[]
    } catch (err) {
      if (this.closed) throw closedError(topic)
      return this.publishLocally(topic, type, data, (err as Error).message)
    }
    if (reply[0] === 'expired') return this.publishLocally(topic, type, data, 'it reached Redis after its deadline')
    const [epoch, gapPrev, gapId, prev, id] = reply as [string, string, string, string, string]
    this.seen.mark(topic, epoch, id)
    // Our own subscribers get it now, through the chain (so after anything
    // older it has not delivered yet); the pub/sub echo is then a duplicate.
    const state = this.topics.get(topic)
    if (state === undefined) return { topic, id: `${epoch}_${id}`, type, data }
    // This publish recorded the gap the node's local deliveries left: the topic leaves local delivery here, as in recoverOnce.
    if (gapId !== '' && state.local) this.leaveLocal(state, epoch, gapId)
    else if (gapId !== '') state.chain.push({ id: gapId, prev: gapPrev, epoch, kind: 'gap' })
    if (!state.local) state.chain.push({ id, prev, epoch, kind: 'event', type, data })
    return { topic, id: `${epoch}_${id}`, type, data }
  }

  subscribe(topic: string): Promise<void> {
    const existing = this.topics.get(topic)
    if (existing !== undefined) return existing.ready
    const state: TopicState = {
      chain: new Chain({
        fill: (epoch, since, upto) => this.fill(topic, epoch, since, upto),
        deliver: (e) => {
          if (this.topics.get(topic) !== state) return
          this.seen.mark(topic, e.epoch, e.id)
          this.listener({ topic, id: `${e.epoch}_${e.id}`, type: e.type!, data: e.data! })
        },
        resync: () => this.resync(topic, state),
        error: (err) => log('a listener threw while delivering %s: %O', topic, err),
      }),
      subscribed: false,
      ready: Promise.resolve(),
      local: false,
      stale: false,
    }
    this.topics.set(topic, state)
    state.ready = this.listen(topic, state)
    return state.ready
  }

  async unsubscribe(topic: string): Promise<void> {
    const state = this.topics.get(topic)
    if (state === undefined) return
    this.topics.delete(topic)
    try {
      await this.live.timed(this.sub.unsubscribe(this.scripts.channel(topic), this.onChannel), false)
    } catch (err) {
      log('unsubscribe from %s failed: %s', topic, (err as Error).message)
    }
  }

  onEvent(listener: (event: BusEvent) => void): void { this.listener = listener }
  onResync(listener: (topic: string) => void): void { this.resyncListener = listener }

  /**
   * Events after `since` up to what this node has delivered live, so a
   * client's replay and its live events meet without a gap or an overlap.
   */
  async history(topic: string, since: string): Promise<BusEvent[] | null> {
    const cursor = CURSOR.exec(since)
    await this.started()
    if (cursor === null || !this.cmd.isReady || this.live.stalled || this.closed) return null
    const [, epoch, id] = cursor as unknown as [string, string, string]
    let upto = '+'
    const state = this.topics.get(topic)
    if (state !== undefined) {
      await bounded(state.ready, this.commandTimeoutMs)
      const chain = state.chain
      if (state.local || !chain.started || chain.epoch !== epoch) return null
      // A client coming from a node that is ahead of this one: wait for this one to catch up.
      if (compareIds(id, chain.lastId!) > 0 && !(await chain.reached(epoch, id, this.commandTimeoutMs))) return null
      upto = chain.lastId!
    }
    const entries = await this.fill(topic, epoch, id, upto)
    // A gap marker: some node delivered events here without Redis; they are not in the stream.
    if (entries === null || entries.some((e) => e.kind === 'gap')) return null
    return entries.filter((e) => e.kind === 'event').map((e) => ({ topic, id: `${epoch}_${e.id}`, type: e.type!, data: e.data! }))
  }

  async latest(topic: string): Promise<string> {
    await this.started()
    const state = this.topics.get(topic)
    if (state !== undefined) {
      await bounded(state.ready, this.commandTimeoutMs)
      if (!state.local && state.chain.started && !this.live.stalled) return `${state.chain.epoch}_${state.chain.lastId}`
      // The chain has not started (Redis slow or away): it may start after
      // events this subscriber will never get live, so it resyncs then.
      if (!state.chain.started) {
        state.stale = true
        return `local:${this.nodeEpoch}:${this.localSeq}`
      }
    }
    if (this.cmd.isReady && !this.live.stalled && !this.closed) {
      try {
        const [epoch, last] = await this.scripts.run(LATEST, topic, [String(this.historySize), String(this.idleTtlMs), nonce()]) as [string, string]
        return `${epoch}_${last}`
      } catch (err) {
        log('latest of %s unavailable: %s', topic, (err as Error).message)
      }
    }
    return `local:${this.nodeEpoch}:${this.localSeq}`
  }

  /** Stop listening and close the bus's own connections. The client you passed stays yours to close. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.live.stop()
    this.topics.clear()
    this.client.off('error', this.onError)
    // Destroying a connection mid-handshake can leave its socket open.
    await bounded(this.connecting, this.commandTimeoutMs)
    this.cmd.destroy()
    this.sub.destroy()
  }

  // ---- internals ----

  /** Right after construction the bus's connections are still being made: wait for them, boundedly, once. */
  private async started(): Promise<void> {
    if (this.up) return
    await bounded(this.connecting, this.commandTimeoutMs)
    this.up = true
  }

  private publishArgs(topic: string, type: string, data: string, gap: boolean): string[] {
    // The deadline, in Redis time, after which the script refuses to run:
    // the node gives up on a reply only after it (see Liveness.timed), so a
    // script that runs late cannot write an event the node delivered itself.
    const deadline = Math.floor(Date.now() + this.live.clockOffset + this.commandTimeoutMs)
    const hw = this.seen.get(topic)
    return [this.scripts.channel(topic), type, data, String(this.historySize), String(this.historyMaxAgeMs), String(this.idleTtlMs), gap ? '1' : '0', String(deadline), nonce(),
      hw?.epoch ?? '', hw?.id ?? '']
  }

  private publishLocally(topic: string, type: string, data: string, why?: string): BusEvent {
    if (why !== undefined) log('publish to %s through Redis failed, delivering locally: %s', topic, why)
    this.counts.localPublishes++
    this.dirty.add(topic)
    const event: BusEvent = { topic, id: `local:${this.nodeEpoch}:${++this.localSeq}`, type, data }
    const state = this.topics.get(topic)
    if (state !== undefined) {
      state.local = true
      this.listener(event)
    }
    return event
  }

  /** The gap is recorded at `gapId`: stream entries flow to this node's clients again, after a resync. */
  private leaveLocal(state: TopicState, epoch: string, gapId: string): void {
    state.local = false
    state.chain.jump(epoch, gapId)
  }

  private resync(topic: string, state: TopicState): void {
    if (this.topics.get(topic) !== state) return
    this.counts.resyncs++
    this.resyncListener(topic)
  }

  /** Entries of `epoch` after `since` up to `upto`, or `null` when the stream cannot vouch for them (or Redis did not answer). */
  private async fill(topic: string, epoch: string, since: string, upto: string): Promise<Entry[] | null> {
    let reply: [number, Array<[string, string[]]>?]
    try {
      reply = await this.scripts.run(HISTORY, topic, [epoch, since, upto]) as typeof reply
    } catch (err) {
      log('history of %s unavailable: %s', topic, (err as Error).message)
      return null
    }
    if (reply[0] !== 1) return null
    this.counts.fills++
    const { entries, rejected } = streamEntries(reply[1] ?? [], epoch, since)
    this.counts.rejectedMessages += rejected
    return entries
  }

  /** Subscribe, then learn where the chain starts; a failure leaves it for `recover`. */
  private async listen(topic: string, state: TopicState): Promise<void> {
    try {
      await this.live.timed(this.sub.subscribe(this.scripts.channel(topic), this.onChannel), false)
      state.subscribed = true
      if (this.topics.get(topic) !== state) return
      if (state.chain.started && !state.local) state.chain.catchUp() // what came while it was not subscribed
      else await this.start(topic, state)
    } catch (err) {
      state.stale = true
      log('subscribe to %s: %s', topic, (err as Error).message)
    }
  }

  private async start(topic: string, state: TopicState): Promise<void> {
    const [epoch, last] = await this.scripts.run(LATEST, topic, [String(this.historySize), String(this.idleTtlMs), nonce()]) as [string, string]
    if (this.topics.get(topic) !== state || state.chain.started) return
    if (state.stale) {
      state.stale = false
      state.chain.jump(epoch, last)
    } else {
      state.chain.start(epoch, last)
    }
  }

  /**
   * A pub/sub message: validated (it may not be ours), then handed to the
   * topic's chain. One listener for every channel, so a message reaches the
   * topic's current state whatever node-redis kept: a SUBSCRIBE or
   * UNSUBSCRIBE cut off by a lost connection leaves node-redis's listeners
   * as they were before it, and a per-state listener then went to a state
   * long gone (the topic silent on this node for good).
   */
  private readonly onChannel = (message: string, channel: string): void => {
    const topic = this.scripts.topic(channel)
    const state = this.topics.get(topic)
    if (state === undefined || state.local) return
    const entry = parseMessage(message, Date.now() + this.live.clockOffset)
    if (entry === null) {
      this.counts.rejectedMessages++
      log('dropped a malformed message on the channel of %s', topic)
      return
    }
    state.chain.push(entry)
  }

  /**
   * Redis answers again, or a connection came back: record the gaps this node
   * left (and resync its own clients of those topics), start chains that
   * could not start, retry subscriptions that failed, and read back what
   * every other topic missed. One run at a time.
   */
  private readonly recover = coalesced(() => this.recoverOnce(), (err) => log('recovery failed: %O', err))

  private async recoverOnce(): Promise<void> {
    if (this.closed || !this.cmd.isReady || this.live.stalled) return
    for (const topic of [...this.dirty]) {
      // Taken once, as a publish takes it (one may have recorded it meanwhile); put back if it is not recorded.
      if (!this.dirty.delete(topic)) continue
      try {
        const [epoch, , gapId] = await this.scripts.run(PUBLISH, topic, () => this.publishArgs(topic, '', '', true)) as string[]
        if (epoch === 'expired') { this.dirty.add(topic); continue }
        const state = this.topics.get(topic)
        if (state !== undefined) this.leaveLocal(state, epoch!, gapId!)
      } catch (err) {
        this.dirty.add(topic)
        log('could not record the gap on %s: %s', topic, (err as Error).message)
        return
      }
    }
    // After a reconnect (a Redis restored from an older snapshot, a lagging replica promoted): streams behind
    // what this node saw get a new epoch. Checked together (the window bounds them), not on every stall's retry.
    const moved = new Set<string>()
    if (this.reconnected) {
      this.reconnected = false
      await Promise.all(this.seen.all().map(async ([topic, hw]) => {
        const r = await this.scripts.run(CHECK, topic, [hw.epoch, hw.id, String(this.historySize), String(this.idleTtlMs), nonce()])
          .catch(() => { this.reconnected = true; return [] }) as string[] // not checked: again next time
        if (r[2] === '1') this.counts.rollbacks++
        if (r.length < 2 || r[0] === hw.epoch) return
        this.seen.mark(topic, r[0]!, r[1]!)
        const state = this.topics.get(topic)
        if (state !== undefined && state.chain.started && !state.local) state.chain.jump(r[0]!, r[1]!)
        moved.add(topic)
      }))
    }
    const subBack = this.subLost && this.sub.isReady
    if (subBack) this.subLost = false
    for (const [topic, state] of this.topics) {
      if (!state.subscribed) await this.listen(topic, state) // which starts the chain or catches it up
      else if (state.local || moved.has(topic)) continue
      else if (!state.chain.started) await this.start(topic, state).catch((err: Error) => log('starting %s: %s', topic, err.message))
      else state.chain.catchUp()
    }
    if (subBack) log('subscriber connection back: caught up on %d topics', this.topics.size)
  }
}
