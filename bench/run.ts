/**
 * `npm run bench`: cms-realtime side by side with raw `ws` and Socket.IO.
 * Every server runs in its own process, the clients in another, all on
 * 127.0.0.1; each case runs `--runs` times and the table shows medians with
 * the min–max spread and cms-realtime's ratio to each baseline.
 *
 * Flags: --smoke (a few hundred clients, seconds), --runs N, --clients N,
 * --connections N, --systems a,b, --cases cms,fanout,connections,storm,long-burst,sse,poll,cross-node,presence,tabs
 * (default all; cross-node needs Redis at 127.0.0.1:6379 or BENCH_REDIS_URL; tabs needs /usr/bin/chromium), --out FILE, --cpu-prof (profiles each server into
 * bench/results/prof), --heap-snapshot (each server after its connections
 * case, into bench/results/heap).
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, totalmem, release } from 'node:os'
import { join } from 'node:path'
import { cms, connections, fanout, longBurst, sseFanout, storm, type CmsRun, type StormRun, type Config, type ConnectionsRun, type FanoutRun, type LongBurstRun, type SseRun } from './cases'
import { cmsTable, stormLine } from './report'
import { printTable, sseLine, summarise } from './report'
import { SYSTEMS, type System } from './systems'
import { CLUSTERS, crossNode, crossNodeLines, type Cluster, type CrossNodeRun } from './cross-node'

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i < 0 ? undefined : (process.argv[i + 1] ?? '')
}
const has = (name: string): boolean => process.argv.includes(`--${name}`)
const num = (name: string, dflt: number): number => {
  const v = flag(name)
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number`)
  return n
}

const smoke = has('smoke')
const resultsDir = join(__dirname, 'results')
const systems = (flag('systems')?.split(',') ?? [...SYSTEMS]) as System[]
for (const s of systems) if (!SYSTEMS.includes(s)) throw new Error(`unknown system ${s}; known: ${SYSTEMS.join(', ')}`)
const CASES = ['cms', 'fanout', 'connections', 'storm', 'long-burst', 'sse', 'poll', 'cross-node', 'presence', 'tabs'] as const
const cases = flag('cases')?.split(',') ?? [...CASES]
for (const c of cases) if (!(CASES as readonly string[]).includes(c)) throw new Error(`unknown case ${c}; known: ${CASES.join(', ')}`)

const cfg: Config = {
  clients: num('clients', smoke ? 200 : 1000),
  topics: num('topics', smoke ? 20 : 100),
  events: num('events', smoke ? 20 : 200),
  publishes: num('publishes', smoke ? 20 : 200),
  selective: num('selective', smoke ? 100 : 2000),
  connections: num('connections', smoke ? 300 : 10_000),
  longBurst: num('long-burst', smoke ? 200 : 10_000),
  runs: num('runs', smoke ? 1 : 3),
  systems,
  heapSnapshotDir: has('heap-snapshot') ? join(resultsDir, 'heap') : undefined,
  serverFlags: has('cpu-prof') ? ['--cpu-prof', '--cpu-prof-interval=100', `--cpu-prof-dir=${join(resultsDir, 'prof')}`] : [],
}

async function main(): Promise<void> {
  if (cfg.heapSnapshotDir !== undefined) mkdirSync(cfg.heapSnapshotDir, { recursive: true })
  const t0 = Date.now()
  // Other work on a shared machine skews absolute figures; record how busy it was.
  const loadBefore = loadavg()[0]
  const fan: Record<string, FanoutRun[]> = {}
  const cmsRuns: Record<string, CmsRun[]> = {}
  const storms: Record<string, StormRun[]> = {}
  const conns: Record<string, ConnectionsRun[]> = {}
  let long: LongBurstRun | null = null
  const sse: SseRun[] = []
  const poll: SseRun[] = []
  console.log(`cms-realtime bench: ${cfg.clients} clients, ${cfg.runs} run(s), systems ${systems.join(', ')}`)
  // Systems interleave within each run, so drift on a shared machine spreads over all of them.
  for (let run = 1; run <= cfg.runs; run++) {
    for (const system of systems) {
      process.stdout.write(`run ${run}/${cfg.runs} ${system}:`)
      if (cases.includes('cms')) {
        process.stdout.write(' cms')
        ;(cmsRuns[system] ??= []).push(await cms(system, cfg))
      }
      if (cases.includes('fanout')) {
        process.stdout.write(' fan-out')
        ;(fan[system] ??= []).push(await fanout(system, cfg))
      }
      if (cases.includes('connections')) {
        process.stdout.write(' connections')
        ;(conns[system] ??= []).push(await connections(system, cfg))
      }
      if (cases.includes('storm')) {
        process.stdout.write(' storm')
        ;(storms[system] ??= []).push(await storm(system, cfg))
      }
      if (system === 'cms-realtime' && cases.includes('sse')) {
        process.stdout.write(' sse-fallback')
        sse.push(await sseFanout(cfg))
      }
      if (system === 'cms-realtime' && cases.includes('poll')) {
        process.stdout.write(' long-poll')
        poll.push(await sseFanout(cfg, 'poll'))
      }
      process.stdout.write('\n')
    }
  }
  if (systems.includes('cms-realtime') && cases.includes('long-burst') && !has('no-long-burst')) {
    // Only cms-realtime: the baselines have no pacing, so a 10k-event loop
    // blocks them for seconds and buffers gigabytes; there is nothing to compare.
    process.stdout.write(`cms-realtime: ${cfg.longBurst}-event burst to ${cfg.clients} clients\n`)
    long = await longBurst('cms-realtime', cfg)
  }
  const cross: Partial<Record<Cluster, CrossNodeRun[]>> = {}
  const crossCfg = { perNode: num('per-node', smoke ? 20 : 100), events: num('cross-events', smoke ? 200 : 5000), publishes: num('cross-publishes', smoke ? 10 : 200), paced: num('cross-paced', smoke ? 200 : 3000), offered: num('cross-offered', smoke ? 2400 : 24_000) }
  if (cases.includes('cross-node')) {
    for (let run = 1; run <= cfg.runs; run++) {
      for (const cluster of CLUSTERS) {
        process.stdout.write(`run ${run}/${cfg.runs} cross-node ${cluster}\n`)
        ;(cross[cluster] ??= []).push(await crossNode(cluster, crossCfg))
      }
    }
  }
  let presence: string[] = []
  if (cases.includes('presence')) {
    // Its own process: it measures heap after GC (--expose-gc).
    process.stdout.write('cms-realtime: presence and locks\n')
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', join(__dirname, 'presence.ts'), String(smoke ? 300 : 2000)], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`presence case failed: ${r.stderr}`)
    presence = r.stdout.trim().split('\n')
  }
  let tabs: string[] = []
  if (cases.includes('tabs')) {
    process.stdout.write('cms-realtime: one connection per browser (Chromium)\n')
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(__dirname, 'tabs.ts')], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`tabs case failed: ${r.stderr}`)
    tabs = r.stdout.trim().split('\n')
  }
  const summary = summarise(fan, conns, systems)
  if (Object.keys(cmsRuns).length > 0) console.log('\n' + cmsTable(cmsRuns, systems, cfg.clients))
  if (Object.keys(storms).length > 0) console.log('\n' + stormLine(storms, systems, cfg.clients))
  if (Object.keys(fan).length > 0 || Object.keys(conns).length > 0) printTable(summary, systems, long)
  if (sse.length > 0) console.log('\n' + sseLine(sse, fan['cms-realtime'] ?? [], cfg.clients))
  if (poll.length > 0) console.log('\n' + sseLine(poll, fan['cms-realtime'] ?? [], cfg.clients, 'long polling', 'pollers'))
  if (Object.keys(cross).length > 0) console.log('\n' + crossNodeLines(cross, crossCfg).join('\n'))
  if (presence.length > 0) console.log('\n' + presence.join('\n'))
  if (tabs.length > 0) console.log('\n' + tabs.join('\n'))
  const machine = {
    cpus: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    kernel: release(),
    loadAverage1m: { before: loadBefore, after: loadavg()[0] },
  }
  const out = flag('out') ?? join(resultsDir, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
  mkdirSync(join(out, '..'), { recursive: true })
  const json = { date: new Date().toISOString(), seconds: (Date.now() - t0) / 1000, machine, config: cfg, summary, longBurst: long, runs: { cms: cmsRuns, storm: storms, fanout: fan, connections: conns, sse, poll, crossNode: cross }, presence, tabs }
  writeFileSync(out, JSON.stringify(json, null, 2))
  console.log(`\n${json.seconds.toFixed(0)} s on ${machine.cpus} × ${machine.cpu}, Node ${machine.node}; JSON: ${out}`)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
