import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatLabeledIds, holdoutSplit, LabelSubsetInputError, parseLabelSpec, selectLabeled, type LabeledRows } from '../../data/labels.ts';

/** 3 classes of 100, 50 and 10 images, sorted by class as ingest writes them, and 5 unlabeled rows. */
function dataset(): LabeledRows {
  const ids: string[] = [];
  const labels: number[] = [];
  [100, 50, 10].forEach((n, c) => {
    for (let i = 0; i < n; i++) {
      ids.push(`c${c}/${i}.png`);
      labels.push(c);
    }
  });
  for (let i = 0; i < 5; i++) {
    ids.push(`unlabeled/${i}.png`);
    labels.push(-1);
  }
  return { ids, labels, classes: ['a', 'b', 'c'] };
}

const write = async (text: string) => {
  const path = join(await mkdtemp(join(tmpdir(), 'labels-')), 'ids.csv');
  await writeFile(path, text);
  return path;
};

describe('parseLabelSpec', () => {
  it.each([
    ['1%', { kind: 'percent', percent: 1 }],
    ['12.5%', { kind: 'percent', percent: 12.5 }],
    ['100%', { kind: 'percent', percent: 100 }],
    ['4-per-class', { kind: 'perClass', perClass: 4 }],
    ['400', { kind: 'count', count: 400 }],
    ['runs/a/finetune/labeled-ids.txt', { kind: 'file', path: 'runs/a/finetune/labeled-ids.txt' }],
  ])('%s', (text, spec) => {
    expect(parseLabelSpec(text)).toEqual(spec);
  });

  it.each([
    ['0%', '--labels 0%: a percentage must be in (0, 100]'],
    ['101%', '--labels 101%: a percentage must be in (0, 100]'],
    ['0-per-class', '--labels 0-per-class: at least 1 image per class'],
    ['0', '--labels 0: at least 1 image'],
    ['-3', '--labels "-3": expected P% (0 < P <= 100), N-per-class, N or an ids file'],
    ['', '--labels "": expected P% (0 < P <= 100), N-per-class, N or an ids file'],
  ])('refuses %j naming the flag', (text, message) => {
    expect(() => parseLabelSpec(text)).toThrow(new LabelSubsetInputError(message));
  });
});

describe('selectLabeled', () => {
  const data = dataset();

  it('takes the same share of every class, exactly N in all, the same for the same seed', async () => {
    const tenth = await selectLabeled(data, parseLabelSpec('10%'), 0);
    expect(tenth.perClass).toEqual({ a: 10, b: 5, c: 1 });
    expect(tenth.rows).toEqual([...tenth.rows].sort((x, y) => x - y));
    expect(new Set(tenth.rows).size).toBe(16);
    for (const [i, r] of tenth.rows.entries()) expect(tenth.labels[i]).toBe(data.labels[r]);
    expect((await selectLabeled(data, parseLabelSpec('10%'), 0)).rows).toEqual(tenth.rows);
    expect((await selectLabeled(data, parseLabelSpec('10%'), 1)).rows).not.toEqual(tenth.rows);
    // 17 of 160: 10.625 / 5.3125 / 1.0625 → 10 / 5 / 1 and the largest remainder (a, .625) gets the 17th.
    expect((await selectLabeled(data, parseLabelSpec('17'), 0)).perClass).toEqual({ a: 11, b: 5, c: 1 });
    expect((await selectLabeled(data, parseLabelSpec('3-per-class'), 0)).perClass).toEqual({ a: 3, b: 3, c: 3 });
    // Not the first images of a class: a seeded draw over all of them.
    const firstTen = tenth.rows.filter((r) => data.labels[r] === 0);
    expect(firstTen).not.toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Unlabeled rows are never picked.
    expect(tenth.rows.every((r) => data.labels[r] >= 0)).toBe(true);
  });

  it('a smaller share of the same seed is not a prefix problem: each class draws from its own stream', async () => {
    const one = await selectLabeled(data, parseLabelSpec('2-per-class'), 5);
    const two = await selectLabeled(data, parseLabelSpec('4-per-class'), 5);
    // The first 2 of each class's permutation are among its first 4.
    expect(one.rows.every((r) => two.rows.includes(r))).toBe(true);
  });

  it.each([
    ['11-per-class', '--labels 11-per-class: class c has only 10 labeled images, 11 wanted'],
    ['2', '--labels 2: too few images to give class c one (it would get 0)'],
    ['1%', '--labels 1%: too few images to give class c one (it would get 0)'],
    ['1000', '--labels 1000: the dataset has only 160 labeled images'],
  ])('%s: refuses with one line', async (text, message) => {
    await expect(selectLabeled(data, parseLabelSpec(text), 0)).rejects.toThrow(new LabelSubsetInputError(message));
  });

  it('refuses a dataset without labels', async () => {
    await expect(selectLabeled({ ids: ['x', 'y'], labels: [-1, -1], classes: [] }, parseLabelSpec('10%'), 0)).rejects.toThrow(
      '--labels: the dataset has no labels; give an ids file with labels (CSV id,label)',
    );
  });

  it('reads ids one per line or as CSV, with or without a header, LF or CRLF; file labels win', async () => {
    const plain = await selectLabeled(data, parseLabelSpec(await write('c0/3.png\r\nc2/9.png\r\n\r\n')), 0);
    expect(plain).toEqual({ rows: [3, 159], labels: [0, 2], perClass: { a: 1, b: 0, c: 1 } });
    const csv = await selectLabeled(data, parseLabelSpec(await write('id,label\nc0/3.png,b\n"c2/9.png",2\nunlabeled/1.png,a\n')), 0);
    expect(csv).toEqual({ rows: [3, 159, 161], labels: [1, 2, 0], perClass: { a: 1, b: 1, c: 1 } });
    const noHeader = await selectLabeled(data, parseLabelSpec(await write('c0/3.png,a\n')), 0);
    expect(noHeader.rows).toEqual([3]);
  });

  it.each([
    ['c0/3.png\nnope.png\n', 'line 2: id "nope.png" is not in the dataset'],
    ['id,label\nc0/3.png,zebra\n', 'line 2: label "zebra" is not one of the classes (a, b, c)'],
    ['c0/3.png,7\n', 'line 1: label "7" is not one of the classes (a, b, c)'],
    ['unlabeled/0.png\n', 'line 1: unlabeled/0.png has no label in the dataset and the file gives none'],
    ['c0/3.png,a\nc0/3.png,b\n', 'line 2: c0/3.png is listed twice with different labels'],
    ['\n\n', 'lists no ids'],
  ])('refuses a bad ids file %j naming file and line', async (text, reason) => {
    const path = await write(text);
    await expect(selectLabeled(data, parseLabelSpec(path), 0)).rejects.toThrow(new LabelSubsetInputError(`--labels ${path}${reason.startsWith('line') ? ' ' : ': '}${reason}`));
  });

  it('writes labeled-ids.txt so that it reads back as the same subset (ids with commas quoted)', async () => {
    const odd: LabeledRows = { ids: ['a,1.png', 'b "2".png', 'c.png'], labels: [0, 1, 0], classes: ['x', 'y'] };
    const all = await selectLabeled(odd, parseLabelSpec('100%'), 0);
    const text = formatLabeledIds(odd, all);
    expect(text).toBe('id,label\n"a,1.png",x\n"b ""2"".png",y\nc.png,x\n');
    expect(await selectLabeled(odd, parseLabelSpec(await write(text)), 0)).toEqual(all);
  });
});

describe('holdoutSplit', () => {
  it('holds out the last N of each class', () => {
    const images = { ids: ['a', 'b', 'c', 'd', 'e', 'f'], labels: Int32Array.from([0, 1, 0, 1, 0, -1]), pixels: new Uint8Array(0), height: 1, width: 1, classes: ['x', 'y'] };
    expect(holdoutSplit(images, 1, 'pretrain.knnHoldout')).toEqual({ train: [0, 1, 2, 5], heldOut: [4, 3] });
    expect(() => holdoutSplit(images, 2, 'pretrain.knnHoldout')).toThrow(new LabelSubsetInputError('pretrain.knnHoldout 2 leaves no training images of class y (2 images)'));
  });
});
