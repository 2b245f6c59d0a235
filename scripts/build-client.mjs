// Bundle the browser client with esbuild:
//   dist/client.mjs        ESM for bundlers (readable)
//   dist/client.min.js     ESM, minified: what <path>/client.js serves to pages without a bundler
//   dist/strapi-admin.mjs  ESM, the live Strapi Content Manager (cms-realtime/strapi-admin)
// and print its minified and gzipped sizes.
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { readFileSync, renameSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const common = { entryPoints: [`${root}lib/client/index.ts`], bundle: true, format: 'esm', target: 'es2020', platform: 'browser', legalComments: 'none' }

// Write beside, then rename: tests in parallel workers rebuild while others
// serve the file, and a rename is atomic where a rewrite is not.
const tmp = `.${process.pid}.tmp`
await build({ ...common, outfile: `${root}dist/client.mjs${tmp}` })
await build({ ...common, outfile: `${root}dist/client.min.js${tmp}`, minify: true })
renameSync(`${root}dist/client.mjs${tmp}`, `${root}dist/client.mjs`)
renameSync(`${root}dist/client.min.js${tmp}`, `${root}dist/client.min.js`)
// The live Content Manager (cms-realtime/strapi-admin): ESM that Strapi's admin
// bundler takes as it is, with the client inside; React, Strapi's admin and
// its design system stay imports, resolved to the app's own copies.
await build({
  entryPoints: [`${root}lib/integrations/strapi/admin/index.ts`], bundle: true, format: 'esm', target: 'es2020', platform: 'browser',
  legalComments: 'none', outfile: `${root}dist/strapi-admin.mjs${tmp}`,
  external: ['react', 'react-redux', 'react-router-dom', '@strapi/strapi/admin', '@strapi/design-system'],
})
renameSync(`${root}dist/strapi-admin.mjs${tmp}`, `${root}dist/strapi-admin.mjs`)
const code = readFileSync(`${root}dist/client.min.js`)
console.log(`client: ${code.length} bytes minified, ${gzipSync(code, { level: 9 }).length} bytes gzipped (dist/client.min.js)`)
