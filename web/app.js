// The MD5 service page: uploads with progress, live status through ?wait=, lookup by id,
// and this browser's recent tasks (localStorage). Uses only the v1 API.
'use strict';

const STORE_KEY = 'md5.recentTasks';
const MAX_RECENT = 50;
// Seconds one long-poll asks for; lowered to the service's longest wait if it says it is shorter.
let waitSeconds = 30;
// Statuses of a task still on its way; any other is final.
const PENDING = new Set(['queued', 'processing', 'uploading']);
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem('md5.apiKey') || '';

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function askForKey() {
  const key = window.prompt('This service needs an API key. Enter it (kept for this session only):');
  if (key) {
    apiKey = key.trim();
    sessionStorage.setItem('md5.apiKey', apiKey);
    return true;
  }
  return false;
}

function recent() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY)) || []; } catch { return []; }
}

function remember(task) {
  const list = recent().filter((t) => t.id !== task.id);
  list.unshift({ id: task.id, file_name: task.file_name });
  localStorage.setItem(STORE_KEY, JSON.stringify(list.slice(0, MAX_RECENT)));
}

function formatBytes(n) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
}

function problemText(status, body) {
  if (status === 413) return `The file is too large. ${body && body.detail ? body.detail : ''}`.trim();
  if (status === 503) return 'The service is unavailable right now. Please try again in a few seconds.';
  if (status === 507) return 'The server has no room for this file right now.';
  if (status === 401) return 'The API key is missing or wrong.';
  if (status === 404) return 'Not found: no task has this id.';
  return (body && body.detail) || `The request failed (HTTP ${status}).`;
}

function copyButton(label, text) {
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  button.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(text); button.textContent = 'Copied'; } catch { button.textContent = 'Copy failed'; }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

function card(title) {
  const li = document.createElement('li');
  li.className = 'task';
  const name = document.createElement('div');
  name.className = 'name';
  name.textContent = title;
  const body = document.createElement('div');
  li.append(name, body);
  $('tasks').prepend(li);
  return { li, body };
}

function render(view, task) {
  view.li.dataset.taskId = task.id;
  view.body.replaceChildren();
  const idRow = document.createElement('div');
  idRow.className = 'row';
  const idCode = document.createElement('code');
  idCode.textContent = task.id;
  idRow.append('Promise id: ', idCode, copyButton('Copy id', task.id));
  const status = document.createElement('div');
  status.className = `status status-${task.status}`;
  status.textContent = `Status: ${task.status}`;
  view.body.append(idRow, status);
  if (task.status === 'done') {
    const md5Row = document.createElement('div');
    md5Row.className = 'row';
    const md5 = document.createElement('code');
    md5.className = 'md5';
    md5.textContent = task.md5;
    md5Row.append('MD5: ', md5, copyButton('Copy MD5', task.md5));
    view.body.append(md5Row);
  }
  if (task.status === 'failed') {
    const error = document.createElement('div');
    error.className = 'error';
    error.textContent = `Error: ${task.error}`;
    view.body.append(error);
  }
  const meta = document.createElement('div');
  meta.className = 'hint';
  const took = task.finished_at ? ` · done in ${((new Date(task.finished_at) - new Date(task.created_at)) / 1000).toFixed(2)} s` : '';
  meta.textContent = `${formatBytes(task.size_bytes)} · uploaded ${new Date(task.created_at).toLocaleString()}${took}`;
  view.body.append(meta);
}

function showError(view, text) {
  view.body.replaceChildren();
  const error = document.createElement('div');
  error.className = 'error';
  error.setAttribute('role', 'alert');
  error.textContent = text;
  view.body.append(error);
}

async function fetchTask(id, wait) {
  const url = `/api/v1/hashes/${encodeURIComponent(id)}${wait ? `?wait=${wait}` : ''}`;
  const response = await fetch(url, { headers: authHeaders() });
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

// Follows a task until it is finished, one long-poll at a time (never a tight loop: a server
// that answers "not yet" sooner than asked is asked again after a growing pause).
async function follow(view, id) {
  let failures = 0;
  let pause = 250;
  for (;;) {
    let result;
    const asked = Date.now();
    try {
      result = await fetchTask(id, waitSeconds);
    } catch {
      result = { status: 0, body: null };
    }
    if (result.status === 200) {
      failures = 0;
      render(view, result.body);
      if (!PENDING.has(result.body.status)) return result.body;
      if (Date.now() - asked < Math.max(waitSeconds, 1) * 1000) {
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(5000, pause * 2);
      } else {
        pause = 250;
      }
      continue;
    }
    // The service's longest wait is shorter than ours: it says so in the problem.
    const maxWait = result.body && Number.isInteger(result.body.max_wait_seconds) ? result.body.max_wait_seconds : null;
    if (result.status === 400 && maxWait !== null && maxWait < waitSeconds) {
      waitSeconds = maxWait;
      continue;
    }
    if (result.status === 401 && askForKey()) continue;
    if (result.status === 404 || result.status === 401) {
      showError(view, problemText(result.status, result.body));
      return null;
    }
    failures += 1;
    showError(view, `${problemText(result.status || 503, result.body)} Retrying…`);
    await new Promise((resolve) => setTimeout(resolve, Math.min(30000, 1000 * 2 ** failures)));
  }
}

function upload(file) {
  const view = card(file.name);
  const progress = document.createElement('progress');
  progress.max = file.size || 1;
  progress.value = 0;
  progress.setAttribute('aria-label', `Upload progress of ${file.name}`);
  const label = document.createElement('span');
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.textContent = 'Cancel';
  const row = document.createElement('div');
  row.className = 'row';
  row.append(label, cancel);
  view.body.append(progress, row);

  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/api/v1/hashes');
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener('progress', (event) => {
    if (event.lengthComputable) {
      progress.max = event.total;
      progress.value = event.loaded;
      label.textContent = `Uploading: ${formatBytes(event.loaded)} of ${formatBytes(event.total)}`;
    }
  });
  cancel.addEventListener('click', () => xhr.abort());
  xhr.addEventListener('abort', () => showError(view, 'Upload cancelled.'));
  xhr.addEventListener('error', () => showError(view, 'The upload failed: the server could not be reached.'));
  xhr.addEventListener('load', () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status === 202 && body) {
      remember(body);
      render(view, body);
      follow(view, body.id);
    } else if (xhr.status === 401 && askForKey()) {
      view.li.remove();
      upload(file);
    } else {
      showError(view, problemText(xhr.status, body));
    }
  });
  const form = new FormData();
  form.append('file', file, file.name);
  xhr.send(form);
}

$('upload-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('file-input');
  for (const file of input.files) upload(file);
  input.value = '';
});

$('lookup-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const id = $('lookup-input').value.trim();
  const message = $('lookup-message');
  message.textContent = '';
  let result = await fetchTask(id, 0).catch(() => ({ status: 503, body: null }));
  if (result.status === 401 && askForKey()) result = await fetchTask(id, 0).catch(() => ({ status: 503, body: null }));
  if (result.status !== 200) {
    message.textContent = result.status === 404 ? `Not found: no task has the id “${id}”.` : problemText(result.status, result.body);
    return;
  }
  remember(result.body);
  const existing = document.querySelector(`[data-task-id="${CSS.escape(result.body.id)}"]`);
  if (existing) existing.remove();
  const view = card(result.body.file_name);
  render(view, result.body);
  if (PENDING.has(result.body.status)) follow(view, result.body.id);
});

for (const type of ['dragenter', 'dragover']) {
  document.addEventListener(type, (event) => { event.preventDefault(); document.body.classList.add('dragging'); });
}
document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
document.addEventListener('drop', (event) => {
  event.preventDefault();
  document.body.classList.remove('dragging');
  for (const file of event.dataTransfer.files) upload(file);
});

// Recent tasks survive a reload; unfinished ones keep updating.
for (const saved of recent().reverse()) {
  const view = card(saved.file_name);
  follow(view, saved.id);
}
