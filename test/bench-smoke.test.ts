/**
 * The bench must not rot: run it small (a few hundred clients, seconds) and
 * check it produced its table and JSON for every system. A check that it
 * runs, not a timed assertion: figures are never compared here.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { redisReachable } from './bus/redis-helpers'

/** Run `bench/run.ts --smoke` with `args`; its output, and the JSON it wrote. */
async function smoke(args: string[], killAfterMs: number): Promise<{ stdout: string; json: unknown }> {
  const dir = mkdtempSync(join(tmpdir(), 'cms-realtime-bench-'))
  const out = join(dir, 'smoke.json')
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--smoke', ...args, '--out', out], {
      cwd: join(__dirname, '..'),
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs)
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
    clearTimeout(timer)
    expect({ code, stderr: code === 0 ? '' : stderr }).toEqual({ code: 0, stderr: '' })
    return { stdout, json: JSON.parse(readFileSync(out, 'utf8')) as unknown }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

const SYSTEMS = ['cms-realtime', 'ws', 'socket.io']

test('npm run bench:smoke runs every single-node case against every system and writes the table and JSON', async () => {
  const { stdout, json: raw } = await smoke(['--cases', 'cms,fanout,connections,storm,long-burst,sse,poll,presence,tabs'], 110_000)
  expect(stdout).toMatch(/reconnect storm, 200 clients at once .*cms-realtime \d+ ms, ws \d+ ms/)
  expect(stdout).toContain('CMS-shaped: 200 editors')
  expect(stdout).toMatch(/\| paced \(10 publishes per turn\): server CPU µs\/delivery \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+× \| [\d.]+× \|/)
  expect(stdout).toMatch(/presence: \d+ B of server heap per present tab/)
  // Chromium is installed by .ci/run; elsewhere the case says why it did not run.
  if (existsSync('/usr/bin/chromium') || process.env.CI === 'true') {
    expect(stdout).toMatch(/tabs: one editor with 5 tabs → 1 server connection\(s\) \(5 with share: false\).* none lost or repeated in any tab/)
  } else expect(stdout).toContain('tabs: skipped, /usr/bin/chromium is missing')
  expect(stdout).toMatch(/presence: a 200-editor CMS .* KiB\/min/)
  expect(stdout).toContain('| metric (median, min–max) | cms-realtime | ws | socket.io | ÷ ws | ÷ socket.io |')
  expect(stdout).toMatch(/-event burst: complete/)
  expect(stdout).toMatch(/SSE fallback, 200 streams .*× the WebSocket path/)
  expect(stdout).toMatch(/long polling, 200 pollers .*deliveries\/s \([\d.]+× the WebSocket path\)/)
  const json = raw as {
    summary: Record<string, Record<string, { median: number }>>
    longBurst: { ok: boolean; received: number; events: number }
    runs: { sse: Array<{ burstRate: number }>; poll: Array<{ burstRate: number }> }
  }
  expect(json.runs.sse[0]?.burstRate).toBeGreaterThan(0)
  expect(json.runs.poll[0]?.burstRate).toBeGreaterThan(0)
  for (const system of SYSTEMS) {
    expect(json.summary.burstRate?.[system]?.median).toBeGreaterThan(0)
    expect(json.summary.lastP50?.[system]?.median).toBeGreaterThan(0)
    expect(json.summary.rssPerConn?.[system]).toBeDefined()
    expect(json.summary.connErrors?.[system]?.median).toBe(0)
  }
  expect(json.longBurst.ok).toBe(true)
}, 120_000)

const redisUp = redisReachable('the cross-node bench smoke')
;(redisUp ? test : test.skip)('the cross-node case runs cms-realtime and both Socket.IO Redis adapters on three nodes and prints the ratios', async () => {
  const { stdout, json } = await smoke(['--cases', 'cross-node'], 55_000)
  expect(stdout).toMatch(/cms-realtime ÷ socket\.io: events\/s [\d.]+×/)
  expect(stdout).toMatch(/cms-realtime ÷ socket\.io-streams: events\/s [\d.]+×/)
  expect(stdout).toMatch(/local-only publishes 0, resyncs per client 0 \(Redis healthy: both 0\)/)
  const runs = (json as { runs: { crossNode: Record<string, Array<{ eventsPerSecond: number }>> } }).runs.crossNode
  for (const c of ['cms-realtime', 'socket.io', 'socket.io-streams']) expect(runs[c]?.[0]?.eventsPerSecond).toBeGreaterThan(0)
}, 60_000)
