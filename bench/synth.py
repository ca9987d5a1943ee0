"""Synthetic corpus for benchmarks: Zipf-structured prompts, realistic parameters, compositional CLIP-like vectors.

Not i.i.d. noise. Every vocabulary term (subject, style, modifier, artist, scene, rare word) has a latent
vector; a prompt's vector is the weighted sum of its terms' vectors plus a shared mean direction (CLIP
embeddings sit in a narrow cone), and an image's vector is its prompt's vector plus per-image variation. All
latent vectors go through the same mixing matrix with a decaying spectrum, so the data has the low intrinsic
dimension and the neighbourhood structure of real embeddings: images of one prompt are close, prompts that
share a subject or an artist are nearer than unrelated ones. On uniform random vectors every approximate index
looks broken; here it behaves as it does on real CLIP vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

HEAD_WORDS = (
    "portrait woman man girl boy cat dog fox wolf dragon robot astronaut knight samurai witch castle city street "
    "forest mountain lake ocean river beach desert island village cabin temple library spaceship car train ship "
    "flower garden tree sunflower rose cherry blossom snow rain fog storm sunset sunrise night moon stars galaxy "
    "cyberpunk steampunk fantasy medieval futuristic ancient magical haunted cozy neon warrior princess king queen "
    "elf goddess angel demon skull owl tiger lion horse whale octopus mushroom crystal waterfall volcano ruins"
).split()
STYLE_WORDS = (
    "oil painting|watercolor|digital art|concept art|35mm photograph|anime|studio ghibli style|pixel art|"
    "ukiyo-e|pencil sketch|3d render|octane render|unreal engine|art nouveau|cinematic still|illustration|"
    "low poly|charcoal drawing|synthwave|impressionism|comic book|matte painting|photorealistic|vaporwave|"
    "digital painting|fantasy art|character design|isometric|polaroid photo|stained glass"
).split("|")
MODIFIERS = (
    "highly detailed|masterpiece|best quality|8k|4k|sharp focus|intricate details|golden hour|volumetric lighting|"
    "dramatic lighting|soft lighting|bokeh|depth of field|trending on artstation|award winning|hdr|ultra realistic|"
    "vibrant colors|muted colors|wide angle|close-up|full body|symmetrical|cinematic lighting|rim light|film grain|"
    "elegant|smooth|octane render|artstation|unreal engine 5|ray tracing|epic composition|hyperrealistic|"
    "pastel colors|dark atmosphere|ethereal|moody|professional photography|high contrast|detailed face|"
    "beautiful|stunning|dynamic pose|centered|studio lighting|8k uhd|photorealistic|concept art|illustration"
).split("|")
ARTISTS = [f"by {a}" for a in (
    "greg rutkowski|alphonse mucha|artgerm|wlop|hayao miyazaki|claude monet|simon stalenhag|moebius|hokusai|"
    "beksinski|thomas kinkade|ross tran|james gurney|makoto shinkai|loish|ilya kuvshinov|craig mullins|"
    "stanley artgerm lau|magali villeneuve|krenz cushart|ruan jia|peter mohrbacher|john singer sargent|"
    "rembrandt|van gogh|salvador dali|h r giger|frank frazetta|boris vallejo|jean giraud|yoshitaka amano"
).split("|")]
SCENES = (
    "in a forest|at night|on a hill|in the rain|under the stars|in space|on the beach|in a city|at sunset|"
    "in the snow|underwater|in a castle|in a garden|in the desert|on a mountain top|in a library|on mars|"
    "in a cave|in the clouds|in a neon lit alley|by a lake|in a field of flowers|in a ruined temple|at dawn"
).split("|")
SAMPLERS = (("Euler a", 0.3), ("DPM++ 2M", 0.25), ("Euler", 0.1), ("DPM++ SDE", 0.08), ("DDIM", 0.07),
            ("UniPC", 0.06), ("DPM++ 2M SDE", 0.06), ("LMS", 0.04), ("Heun", 0.04))
SCHEDULES = (("Karras", 0.5), ("Automatic", 0.4), ("Exponential", 0.1))
SIZES = (((512, 512), 0.45), ((512, 768), 0.2), ((768, 512), 0.1), ((1024, 1024), 0.15), ((832, 1216), 0.06),
         ((640, 640), 0.04))
STEPS = ((20, 0.35), (25, 0.15), (30, 0.2), (28, 0.08), (50, 0.1), (40, 0.05), (15, 0.04), (4, 0.03))
CFGS = ((7.0, 0.4), (7.5, 0.2), (5.0, 0.1), (6.0, 0.1), (8.0, 0.08), (9.0, 0.05), (4.5, 0.04), (1.0, 0.03))
NEGATIVES = ("lowres, bad anatomy", "", "blurry, lowres, bad hands, text, watermark", "ugly, deformed, disfigured",
             "worst quality, low quality, jpeg artifacts")

# Weights of each kind of term in a prompt's vector (the subject dominates, modifiers barely move it).
W_SUBJECT, W_SUBJECT2, W_STYLE, W_ARTIST, W_SCENE, W_MODIFIER, W_RARE = 1.0, 0.6, 0.7, 0.5, 0.4, 0.12, 0.3
SPECTRUM_DECAY = 0.45  # singular values of the mixing matrix fall as rank**-decay (low intrinsic dimension)
MEAN_WEIGHT = 0.8  # the shared mean direction (the "cone" of CLIP embeddings); a text query gets another one
IMAGE_NOISE = 0.45  # per-image variation relative to a unit prompt vector


def _syllable_words(rng: np.random.Generator, n: int) -> list[str]:
    """A long tail of made-up but pronounceable words (rare subjects, names, places)."""
    onsets = "b c d f g h j k l m n p r s t v w z br cr dr gr kr pl st tr sh ch th".split()
    vowels = "a e i o u ai ea ou io".split()
    codas = ["", "n", "r", "s", "l", "th", "x", "m"]
    words: set[str] = set()
    while len(words) < n:
        o = rng.integers(len(onsets), size=(n, 3))
        v = rng.integers(len(vowels), size=(n, 3))
        k = rng.integers(2, 4, size=n)
        c = rng.integers(len(codas), size=n)
        for j in range(n):
            words.add("".join(onsets[o[j, i]] + vowels[v[j, i]] for i in range(k[j])) + codas[c[j]])
    return sorted(words)[:n]


def _weighted(rng: np.random.Generator, table: tuple[tuple[Any, float], ...], n: int) -> NDArray[np.int64]:
    weights = np.array([w for _, w in table], dtype=np.float64)
    return rng.choice(len(table), size=n, p=weights / weights.sum())


@dataclass
class Corpus:
    """Prompts, what each prompt is made of (a sparse prompt x term weight matrix), and each image's prompt."""

    prompts: list[str]
    terms: list[str]  # vocabulary of latent terms (subjects, styles, modifiers, artists, scenes)
    composition: sparse.csr_matrix  # (n_prompts, n_terms) weights
    image_prompt: NDArray[np.int64]
    seed: int = 0

    @property
    def n_images(self) -> int:
        return len(self.image_prompt)

    def prompt_lengths(self) -> NDArray[np.int64]:
        return np.array([len(p.replace(",", " ").split()) for p in self.prompts], dtype=np.int64)


def make_prompts(n_prompts: int, seed: int = 0) -> tuple[list[str], list[str], sparse.csr_matrix]:
    """`n_prompts` distinct prompts with Zipf-distributed subjects, 1-3 artists, 0-10 modifiers, scenes and rare
    words: 5 to 70 words, about 25 on average, like Stable Diffusion prompts in DiffusionDB."""
    rng = np.random.default_rng(seed)
    tail = _syllable_words(rng, 20_000)
    subjects = HEAD_WORDS + tail
    terms = subjects + STYLE_WORDS + MODIFIERS + ARTISTS + SCENES
    off_style = len(subjects)
    off_mod = off_style + len(STYLE_WORDS)
    off_artist = off_mod + len(MODIFIERS)
    off_scene = off_artist + len(ARTISTS)
    zipf_p = 1.0 / np.arange(1, len(subjects) + 1) ** 1.05
    zipf_p /= zipf_p.sum()
    style_p = 1.0 / np.arange(1, len(STYLE_WORDS) + 1) ** 0.8
    style_p /= style_p.sum()
    mod_p = 1.0 / np.arange(1, len(MODIFIERS) + 1) ** 0.7
    mod_p /= mod_p.sum()
    artist_p = 1.0 / np.arange(1, len(ARTISTS) + 1) ** 1.0
    artist_p /= artist_p.sum()
    prompts: list[str] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    seen: set[str] = set()
    while len(prompts) < n_prompts:
        batch = n_prompts - len(prompts) + 1000
        subj = rng.choice(len(subjects), size=(batch, 3), p=zipf_p)
        n_subj = rng.choice([1, 2, 3], size=batch, p=[0.45, 0.4, 0.15])
        style = rng.choice(len(STYLE_WORDS), size=batch, p=style_p)
        n_mod = np.minimum(rng.poisson(7, size=batch), 14)
        gumbel = np.log(mod_p) - np.log(-np.log(rng.random((batch, len(MODIFIERS)))))
        mods = np.argsort(-gumbel, axis=1)[:, :14]  # weighted sampling without replacement
        n_art = rng.choice([0, 1, 2, 3], size=batch, p=[0.4, 0.33, 0.18, 0.09])
        arts = rng.choice(len(ARTISTS), size=(batch, 3), p=artist_p)
        scene = rng.integers(len(SCENES), size=batch)
        use_scene = rng.random(batch) < 0.45
        rare = rng.integers(len(tail), size=(batch, 6))
        n_rare = np.where(rng.random(batch) < 0.3, rng.integers(1, 7, size=batch), 0)
        for j in range(batch):
            subject_ids = list(dict.fromkeys(int(s) for s in subj[j, : n_subj[j]]))
            parts = ["a " + " ".join(subjects[i] for i in subject_ids)]
            comp: dict[int, float] = {}
            for k, i in enumerate(subject_ids):
                comp[i] = comp.get(i, 0.0) + (W_SUBJECT if k == 0 else W_SUBJECT2)
            if n_rare[j]:
                words = list(dict.fromkeys(int(w) for w in rare[j, : n_rare[j]]))
                parts.append(" ".join(tail[w] for w in words))
                for w in words:
                    comp[len(HEAD_WORDS) + w] = comp.get(len(HEAD_WORDS) + w, 0.0) + W_RARE
            if use_scene[j]:
                parts[0] += " " + SCENES[scene[j]]
                comp[off_scene + int(scene[j])] = W_SCENE
            parts.append(STYLE_WORDS[style[j]])
            comp[off_style + int(style[j])] = W_STYLE
            for m in mods[j][: n_mod[j]]:
                parts.append(MODIFIERS[m])
                comp[off_mod + int(m)] = W_MODIFIER
            for a in dict.fromkeys(int(a) for a in arts[j, : n_art[j]]):
                parts.append(ARTISTS[a])
                comp[off_artist + a] = W_ARTIST
            text = ", ".join(parts)
            if text in seen:
                continue
            seen.add(text)
            row = len(prompts)
            prompts.append(text)
            for c, v in comp.items():
                rows.append(row)
                cols.append(c)
                vals.append(v)
            if len(prompts) == n_prompts:
                break
    composition = sparse.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n_prompts, len(terms)))
    return prompts, terms, composition


def make_corpus(n_images: int, n_prompts: int, seed: int = 0) -> Corpus:
    """Prompts and the prompt of each image: popular prompts get many images (Zipf), every prompt at least one."""
    rng = np.random.default_rng(seed + 1)
    n_prompts = min(n_prompts, n_images)
    prompts, terms, composition = make_prompts(n_prompts, seed)
    weights = 1.0 / np.arange(1, n_prompts + 1) ** 0.8
    extra = rng.choice(n_prompts, size=max(0, n_images - n_prompts), p=weights / weights.sum())
    image_prompt = np.concatenate([np.arange(n_prompts), extra])[:n_images]
    rng.shuffle(image_prompt)
    return Corpus(prompts, terms, composition, image_prompt.astype(np.int64), seed)


class VectorSpace:
    """Latent term vectors and a mixing matrix with a decaying spectrum, for one embedding model (dim)."""

    def __init__(self, corpus: Corpus, dim: int, salt: int) -> None:
        rng = np.random.default_rng([corpus.seed, salt])
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spectrum = (1.0 + np.arange(dim)) ** -SPECTRUM_DECAY
        self.mix = (q * (spectrum / np.linalg.norm(spectrum) * np.sqrt(dim))).astype(np.float32)
        self.dim = dim
        self.term_vectors = self._gauss(rng, len(corpus.terms))
        self.mean = self._unit(rng.standard_normal(dim))
        self.text_mean = self._unit(rng.standard_normal(dim))  # the modality gap: text queries sit elsewhere
        self.corpus = corpus
        raw = np.asarray(corpus.composition @ self.term_vectors, dtype=np.float32)
        raw /= np.linalg.norm(raw, axis=1, keepdims=True)
        self.prompt_vectors = self._normalise(raw + MEAN_WEIGHT * self.mean)

    def _gauss(self, rng: np.random.Generator, n: int) -> NDArray[np.float32]:
        out = rng.standard_normal((n, self.dim), dtype=np.float32) @ self.mix.T
        return (out / np.sqrt(self.dim)).astype(np.float32)

    @staticmethod
    def _unit(v: NDArray[Any]) -> NDArray[np.float32]:
        return (v / np.linalg.norm(v)).astype(np.float32)

    @staticmethod
    def _normalise(m: NDArray[np.float32]) -> NDArray[np.float32]:
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return np.ascontiguousarray(m, dtype=np.float32)

    def images(self, prompt_ids: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.float32]:
        """Image vectors: the prompt's vector plus per-image variation (same spectrum)."""
        noise = self._gauss(rng, len(prompt_ids))
        return self._normalise(self.prompt_vectors[prompt_ids] + IMAGE_NOISE * noise)

    def text_queries(self, term_lists: list[list[int]]) -> NDArray[np.float32]:
        """Vectors of short text queries made of these terms, near the text side of the cone."""
        out = np.zeros((len(term_lists), self.dim), np.float32)
        for i, ids in enumerate(term_lists):
            v = self.term_vectors[ids].sum(axis=0)
            out[i] = v / max(float(np.linalg.norm(v)), 1e-6)
        return self._normalise(out + MEAN_WEIGHT * self.text_mean + 0.35 * self.mean)


def make_vectors(corpus: Corpus, space: VectorSpace | None = None, *, dim: int = 512,
                 chunk: int = 100_000) -> Iterator[NDArray[np.float32]]:
    """Image vectors in image order (row i belongs to image i), yielded in chunks."""
    space = space or VectorSpace(corpus, dim, salt=512)
    for start in range(0, corpus.n_images, chunk):
        rng = np.random.default_rng([corpus.seed, 99, start])
        yield space.images(corpus.image_prompt[start:start + chunk], rng)


def make_queries(corpus: Corpus, space: VectorSpace, n: int, seed: int = 7) -> tuple[NDArray[np.float32], list[str]]:
    """Query vectors: half new images of existing prompts (image-to-image), half short text queries (1-4 terms,
    frequent terms more often: text-to-image across the modality gap). Returns (vectors, kind of each)."""
    rng = np.random.default_rng([corpus.seed, seed])
    n_img = n // 2
    image_q = space.images(corpus.image_prompt[rng.integers(0, corpus.n_images, n_img)], rng)
    comp = corpus.composition
    term_lists = []
    for p in rng.integers(0, len(corpus.prompts), n - n_img):
        row = comp.indices[comp.indptr[p]:comp.indptr[p + 1]]
        k = int(rng.integers(1, 5))
        term_lists.append([int(t) for t in rng.choice(row, size=min(k, len(row)), replace=False)])
    text_q = space.text_queries(term_lists)
    return np.vstack([image_q, text_q]), ["image"] * n_img + ["text"] * (n - n_img)


_STOP = {"a", "an", "the", "by", "of", "in", "on", "at", "and", "with", "under", "to"}


def keyword_queries(corpus: Corpus, words: int, n: int, seed: int = 11) -> list[str]:
    """`n` queries of `words` adjacent words taken from prompts (picked by image popularity), stop words left out:
    what people type, so the most common words come up as often as they do in prompts."""
    rng = np.random.default_rng([corpus.seed, seed, words])
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n and tries < n * 50:
        tries += 1
        text = corpus.prompts[int(corpus.image_prompt[rng.integers(corpus.n_images)])]
        tokens = [t for t in text.replace(",", " ").split() if t not in _STOP]
        if len(tokens) < words:
            continue
        start = int(rng.integers(0, len(tokens) - words + 1))
        q = " ".join(tokens[start:start + words])
        if q in seen:
            continue
        seen.add(q)
        out.append(q)
    return out


def common_words(corpus: Corpus, top: int = 20, sample: int = 20_000) -> list[tuple[str, float]]:
    """The most frequent non-stop words and the share of prompts holding each."""
    rng = np.random.default_rng([corpus.seed, 5])
    counts: dict[str, int] = {}
    picks = rng.integers(0, len(corpus.prompts), min(sample, len(corpus.prompts)))
    for p in picks:
        for t in set(corpus.prompts[int(p)].replace(",", " ").split()) - _STOP:
            counts[t] = counts.get(t, 0) + 1
    best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(w, c / len(picks)) for w, c in best]


def copy_rows(corpus: Corpus, seed: int = 0, start_time: datetime | None = None, *, start: int = 0,
              stop: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Rows in promptdex.store.copy_columns() order for bulk_load(rows=...), for images [start, stop)."""
    n = corpus.n_images
    stop = n if stop is None else min(stop, n)
    rng = np.random.default_rng([seed, 4, start])
    m = stop - start
    samplers, schedules = _weighted(rng, SAMPLERS, m), _weighted(rng, SCHEDULES, m)
    sizes, steps, cfgs = _weighted(rng, SIZES, m), _weighted(rng, STEPS, m), _weighted(rng, CFGS, m)
    negatives = rng.choice(len(NEGATIVES), size=m, p=[0.4, 0.25, 0.2, 0.1, 0.05])
    model_names = [f"model_{i:02d}_v{1 + i % 3}" for i in range(40)]
    model_hashes = [hashlib.md5(name.encode()).hexdigest()[:10] for name in model_names]
    mp = 1.0 / np.arange(1, 41) ** 1.2
    models = rng.choice(40, size=m, p=mp / mp.sum())
    seeds = rng.integers(0, 2**32, size=m)
    t0 = start_time or datetime(2024, 1, 1, tzinfo=UTC)
    for j in range(m):
        i = start + j
        prompt = corpus.prompts[int(corpus.image_prompt[i])]
        w, h = SIZES[sizes[j]][0]
        model = model_names[int(models[j])]
        sampler, schedule = SAMPLERS[samplers[j]][0], SCHEDULES[schedules[j]][0]
        step, cfg, negative = STEPS[steps[j]][0], CFGS[cfgs[j]][0], NEGATIVES[negatives[j]]
        params = {"prompt": prompt, "negative_prompt": negative, "steps": step, "sampler": sampler,
                  "scheduler": schedule, "cfg": cfg, "seed": int(seeds[j]), "width": w, "height": h,
                  "model": model, "model_hash": model_hashes[int(models[j])]}
        digest = hashlib.sha256(f"synthetic-{seed}-{i}".encode()).hexdigest()
        yield (
            digest, f"/synthetic/{digest[:2]}/{digest}.png", 400_000 + i % 997, None, w, h, "PNG", prompt,
            negative, params["seed"], step, cfg, sampler, schedule, None, None, model, params["model_hash"],
            None, None, None, None, json.dumps(params), None, "a1111", "{}", t0 + timedelta(seconds=60 * i),
            0.0, "synthetic", "{}", "synthetic", None,  # scored safe (every safe-mode level searches them); no C2PA
        )
