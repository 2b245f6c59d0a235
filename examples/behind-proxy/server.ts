/**
 * `npm run start:behind-proxy`: the demo CMS behind a proxy that strips
 * WebSocket upgrades (nginx with a plain proxy_pass), to see the fallback and
 * its diagnosis. PORT (default 3000) is the proxy, APP_PORT (3001) the app.
 */
import { startBehindProxy } from './start'

const port = Number(process.env.PORT ?? 3000)
const appPort = Number(process.env.APP_PORT ?? 3001)
const host = process.env.HOST ?? '127.0.0.1'

async function main(): Promise<void> {
  const demo = await startBehindProxy({ port, appPort, host })
  console.log(`demo CMS behind a proxy that strips WebSocket upgrades`)
  console.log(`  through the proxy:  http://localhost:${demo.proxy.port}/?user=anna   → badge "fallback", a hint names the proxy`)
  console.log(`  straight to the app: http://localhost:${appPort}/?user=anna   → badge "live"`)
  console.log(`  what the server sees (rt.stats()) is printed here when it changes`)

  // The admin's view: editors on SSE, stripped upgrades, and the clients' reports.
  let last = ''
  const timer = setInterval(() => {
    const s = demo.rt.stats()
    const line = `stats: connections=${s.connections} fallbackStreams=${s.fallbackStreams} strippedUpgrades=${s.strippedUpgrades} diagnoses=${JSON.stringify(s.diagnoses)}`
    if (line !== last) console.log(`  ${line}`)
    last = line
  }, 1000)

  const stop = () => {
    clearInterval(timer)
    void demo.close().then(() => process.exit(0))
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
