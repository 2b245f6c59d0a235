// The demo page: plain DOM and the public browser client, served by the
// middleware itself. State lives in Maps keyed by id, so a write seen both in
// a fetch and in an event is shown once, whichever arrives first.
import { createClient } from '/realtime/client.js'

const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
const cookie = (name) => document.cookie.split('; ').find((c) => c.startsWith(`${name}=`))?.slice(name.length + 1)
// The page's GET set the cookie the realtime requests are authenticated by.
const user = params.get('user') ?? cookie('demo-user') ?? 'anna'
let projectId = Number(params.get('project') ?? 1)
let lostAccess = false

const projects = new Map() // id → { id, name, itemCount, commentCount }
let project = { id: projectId, name: '', items: new Map(), comments: new Map() }
const notes = new Map() // id → { id, text, from }
let unseen = 0

// ---- API (as the signed-in demo user) --------------------------------------

async function api(method, url, body) {
  const headers = { 'x-demo-user': user }
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  if (!res.ok) throw new Error(`${res.status}: ${(await res.text()) || res.statusText}`)
  return res.json()
}

const total = (p) => p.itemCount + p.commentCount

function mergeProject(summary) {
  // An event may be newer than a fetch answered just after it; counts only grow.
  const old = projects.get(summary.id)
  if (old === undefined || total(summary) >= total(old)) projects.set(summary.id, summary)
}

async function loadProjects() {
  for (const p of await api('GET', '/api/projects')) mergeProject(p)
  renderProjects()
}

async function loadProject() {
  const id = projectId
  try {
    const p = await api('GET', `/api/projects/${id}`)
    if (id !== projectId) return
    project.name = p.name
    for (const i of p.items) project.items.set(i.id, i)
    for (const c of p.comments) project.comments.set(c.id, c)
    showError('')
  } catch (err) {
    showError(`Could not load project ${id}: ${err.message}`)
  }
  renderProject()
}

const refresh = () => Promise.all([loadProjects(), loadProject()])

// ---- realtime ----------------------------------------------------------------

const rt = createClient({ configUrl: '/realtime/config' })
window.rt = rt // for the console (and the demo's tests)

rt.on('state', renderState)
rt.on('diagnosis', renderDiagnosis)
// Access to the open project was withdrawn (removed from its members): the
// client already dropped the subscription; say so and clear what we showed.
rt.on('error', (e) => {
  if (e.code !== 'forbidden' || e.topic !== `project:${projectId}`) return
  lostAccess = true
  project.items.clear()
  project.comments.clear()
  renderProject()
  showError(`You no longer have access to ${project.name || `project ${projectId}`}.`)
})
// History could not cover a gap (e.g. a long disconnect): fetch that data again.
rt.on('resync', (topic) => {
  if (topic === 'projects') void loadProjects()
  else if (topic === `project:${projectId}`) void loadProject()
})

rt.subscribe('projects', (e) => {
  if (e.type !== 'project-updated') return
  mergeProject(e.data)
  renderProjects(e.data.id)
})

rt.subscribe(`notifications:${user}`, (e) => {
  if (e.type !== 'notification' || notes.has(e.data.id)) return
  notes.set(e.data.id, e.data)
  if ($('bell-panel').hidden) unseen++
  renderBell()
})

function watchProject() {
  return rt.subscribe(`project:${projectId}`, (e) => {
    if (e.data.projectId !== projectId) return
    if (e.type === 'item-added') project.items.set(e.data.item.id, e.data.item)
    else if (e.type === 'comment-added') project.comments.set(e.data.comment.id, e.data.comment)
    else return
    renderProject(e.type === 'item-added' ? e.data.item.id : e.data.comment.id)
  })
}
let unwatch = watchProject()

function selectProject(id) {
  if (id === projectId && !lostAccess) return
  unwatch()
  lostAccess = false
  projectId = id
  project = { id, name: projects.get(id)?.name ?? '', items: new Map(), comments: new Map() }
  params.set('project', String(id))
  history.replaceState(null, '', `?${params}`)
  unwatch = watchProject() // subscribe first, then fetch: nothing falls in between
  renderProjects()
  renderProject()
  void loadProject()
}

// ---- rendering ---------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props)
  e.append(...children)
  return e
}

function renderState(state = rt.state) {
  const badge = $('badge')
  badge.dataset.state = state
  badge.textContent = state
  badge.title = {
    connecting: 'Connecting to the realtime channel…',
    live: 'Live over WebSocket',
    fallback: 'Live over Server-Sent Events; the WebSocket is retried in the background',
    'manual-refresh': 'The server pushes nothing: refresh to see changes',
    offline: 'Nothing gets through; retrying',
    'signed-out': 'Your session ended: sign in again',
  }[state] ?? state
  $('banner').hidden = state !== 'manual-refresh'
  $('signed-out').hidden = state !== 'signed-out'
  $('who').textContent = state === 'signed-out' ? 'Signed out:' : 'Signed in as'
  for (const form of document.forms) form.querySelector('fieldset, button').disabled = state === 'signed-out'
}

function renderDiagnosis(d) {
  const p = $('diagnosis')
  p.hidden = d === null || d.cause === 'disabled'
  if (d === null) return
  const why = d.cause === 'stripped_upgrade'
    ? 'a proxy between you and the server dropped the WebSocket upgrade (nginx needs proxy_set_header Upgrade/Connection)'
    : d.cause
  p.textContent = `WebSocket not in use: ${why}.`
}

function renderProjects(flashId) {
  const list = $('projects')
  list.replaceChildren(...[...projects.values()].sort((a, b) => a.id - b.id).map((p) => {
    const a = el('a', { href: `?user=${encodeURIComponent(user)}&project=${p.id}` },
      el('span', { textContent: p.name }),
      el('span', { className: 'n', textContent: `${p.itemCount} ${p.itemCount === 1 ? 'item' : 'items'}` }))
    a.setAttribute('aria-current', String(p.id === projectId))
    a.addEventListener('click', (ev) => { ev.preventDefault(); selectProject(p.id) })
    const li = el('li', { className: p.id === flashId ? 'flash' : '' }, a)
    li.dataset.project = String(p.id)
    return li
  }))
}

function renderProject(flashId) {
  $('project-name').textContent = project.name || `Project ${project.id}`
  const rows = (map, render, empty) => map.size === 0
    ? [el('li', { className: 'empty', textContent: empty })]
    : [...map.values()].sort((a, b) => a.id - b.id).map((x) => el('li', { className: x.id === flashId ? 'flash' : '' }, ...render(x)))
  $('items').replaceChildren(...rows(project.items, (i) => [i.title], 'No items yet.'))
  $('comments').replaceChildren(...rows(project.comments, (c) => [el('span', { className: 'by', textContent: c.by }), ' ', c.text], 'No comments yet.'))
}

function renderBell() {
  const count = $('bell-count')
  count.hidden = unseen === 0
  count.textContent = String(unseen)
  const list = [...notes.values()].reverse()
  $('bell-list').replaceChildren(...(list.length === 0
    ? [el('li', { className: 'empty', textContent: 'Nothing yet.' })]
    : list.map((n) => el('li', {}, el('span', { className: 'by', textContent: `${n.from}:` }), ' ', n.text))))
}

function showError(text) {
  $('error').hidden = text === ''
  $('error').textContent = text
}

// ---- forms -------------------------------------------------------------------

function onSubmit(id, send) {
  const form = $(id)
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const data = Object.fromEntries(new FormData(form))
    try {
      await send(data)
      form.reset()
      showError('')
      // Without a push channel the author still sees their own write at once.
      if (rt.state !== 'live' && rt.state !== 'fallback') await refresh()
    } catch (err) {
      showError(err.message)
    }
  })
}

onSubmit('item-form', async ({ title }) => {
  const item = await api('POST', `/api/projects/${projectId}/items`, { title })
  project.items.set(item.id, item)
  renderProject(item.id)
})
onSubmit('comment-form', async ({ text }) => {
  const comment = await api('POST', `/api/projects/${projectId}/comments`, { text })
  project.comments.set(comment.id, comment)
  renderProject(comment.id)
})
onSubmit('note-form', async ({ to, text }) => {
  await api('POST', `/api/notifications/${encodeURIComponent(to)}`, { text })
})

$('bell-button').addEventListener('click', () => {
  const panel = $('bell-panel')
  panel.hidden = !panel.hidden
  $('bell-button').setAttribute('aria-expanded', String(!panel.hidden))
  unseen = 0
  renderBell()
})
$('refresh').addEventListener('click', () => void refresh())
$('sign-out').addEventListener('click', () => void api('POST', '/api/logout').catch((err) => showError(err.message)))
$('sign-in').addEventListener('click', async () => {
  try {
    await api('POST', '/api/login', { user })
    rt.reconnect()
    await refresh()
  } catch (err) {
    showError(err.message)
  }
})

$('user').textContent = user
$('note-form').elements.to.value = user === 'anna' ? 'ben' : 'anna'
renderState()
renderBell()
void refresh()
