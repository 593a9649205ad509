// Interop with a third-party resumable-upload client: tus-js-client (npm, pinned in
// package-lock.json) under Node uploads a 64 MiB file in 4 MiB chunks to the live api, once with
// tus 1.0.0 and once with the IETF draft -05 (interop version 6); the task's MD5 must equal
// md5sum's. Run by scripts/interop-test.sh (which starts the api and a worker).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Upload } from 'tus-js-client';

const BASE = process.env.MD5_BASE_URL;
const SIZE = 64 * 1024 * 1024;
const CHUNK = 4 * 1024 * 1024;

const dir = mkdtempSync(join(tmpdir(), 'md5-interop-'));
const path = join(dir, 'interop.bin');
writeFileSync(path, randomBytes(SIZE));
const expected = execFileSync('md5sum', [path]).toString().split(' ')[0];

function upload(protocol) {
  return new Promise((resolve, reject) => {
    let chunks = 0;
    const upload = new Upload(createReadStream(path), {
      endpoint: `${BASE}/api/v1/uploads`,
      protocol,
      chunkSize: CHUNK,
      uploadSize: SIZE,
      metadata: { filename: `interop-${protocol}.bin` },
      retryDelays: [0, 500, 1000, 2000],
      onChunkComplete: () => { chunks += 1; },
      onError: reject,
      onSuccess: () => resolve({ url: upload.url, chunks }),
    });
    upload.start();
  });
}

async function finished(id) {
  for (let i = 0; i < 20; i += 1) {
    const answer = await fetch(`${BASE}/api/v1/hashes/${id}?wait=10`);
    assert.equal(answer.status, 200);
    const task = await answer.json();
    if (!['uploading', 'queued', 'processing'].includes(task.status)) return task;
  }
  throw new Error(`task ${id} did not finish`);
}

for (const protocol of ['tus-v1', 'ietf-draft-05']) {
  test(`tus-js-client (${protocol}) uploads 64 MiB in 4 MiB chunks and the MD5 is md5sum's`, async () => {
    assert.ok(BASE, 'MD5_BASE_URL must name a running md5-api: run scripts/interop-test.sh');
    const { url, chunks } = await upload(protocol);
    assert.equal(chunks, SIZE / CHUNK, 'one request per 4 MiB chunk');
    const id = new URL(url).pathname.split('/').pop();
    const task = await finished(id);
    assert.equal(task.status, 'done', JSON.stringify(task));
    assert.equal(task.md5, expected);
    assert.equal(task.size_bytes, SIZE);
    assert.equal(task.file_name, `interop-${protocol}.bin`);
  });
}

test.after(() => rmSync(dir, { recursive: true, force: true }));
