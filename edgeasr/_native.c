/* edgeasr's compiled parts (plain CPython API, built by `pip install` / make setup).
 *
 * The CTC prefix beam search's inner loop: edgeasr.decoding.ctc.PrefixBeamSearch's
 * streaming core, step for step the same arithmetic as the pure-Python search in that module
 * (which stays the reference: tests/test_native_search.py checks identical n-best lists).
 *
 * Why C: per frame the search expands ~10 beams by ~4 tokens; in Python that bookkeeping was
 * 9-18% of streaming time, here ~10x less (benchmarks/search_speed.py). The only Python left is the fused scorer (LM, hotwords) on a cache miss: states are small integers
 * that the Python wrapper interns, and (state, token) -> (delta, state) is cached here.
 *
 * Data: a prefix trie (parent/token arrays and a hash of (node, token) -> child), an emission
 * pool of cons cells (frame, posterior, previous) for token times, the live beams, and per frame
 * a list of candidate entries in insertion order with a small hash of node -> entry.
 * Ordering rules mirror the Python version exactly (ties keep insertion order), so both give the
 * same beams in the same order.

 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY_KEY UINT64_MAX

/* --- an open-addressing hash map: uint64 key -> (int64, double) ------------------------------- */
typedef struct {
    uint64_t *keys;
    int64_t *ivals;
    double *dvals;
    size_t cap, count;
} Map;

static int map_init(Map *m, size_t cap) {
    m->keys = malloc(cap * sizeof(uint64_t));
    m->ivals = malloc(cap * sizeof(int64_t));
    m->dvals = malloc(cap * sizeof(double));
    if (!m->keys || !m->ivals || !m->dvals) return -1;
    memset(m->keys, 0xff, cap * sizeof(uint64_t));
    m->cap = cap;
    m->count = 0;
    return 0;
}

static void map_free(Map *m) {
    free(m->keys); free(m->ivals); free(m->dvals);
    m->keys = NULL; m->ivals = NULL; m->dvals = NULL;
    m->cap = m->count = 0;
}

static void map_clear(Map *m) {
    memset(m->keys, 0xff, m->cap * sizeof(uint64_t));
    m->count = 0;
}

static inline size_t map_hash(uint64_t key, size_t cap) {
    key ^= key >> 33; key *= 0xff51afd7ed558ccdULL; key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

/* index of key's slot, or of the empty slot where it would go */
static inline size_t map_slot(const Map *m, uint64_t key) {
    size_t i = map_hash(key, m->cap);
    while (m->keys[i] != EMPTY_KEY && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    return i;
}

static int map_grow(Map *m) {
    Map bigger;
    if (map_init(&bigger, m->cap * 2) < 0) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == EMPTY_KEY) continue;
        size_t j = map_slot(&bigger, m->keys[i]);
        bigger.keys[j] = m->keys[i]; bigger.ivals[j] = m->ivals[i]; bigger.dvals[j] = m->dvals[i];
        bigger.count++;
    }
    map_free(m);
    *m = bigger;
    return 0;
}

static int map_put(Map *m, uint64_t key, int64_t ival, double dval) {
    if ((m->count + 1) * 2 > m->cap && map_grow(m) < 0) return -1;
    size_t i = map_slot(m, key);
    if (m->keys[i] == EMPTY_KEY) { m->keys[i] = key; m->count++; }
    m->ivals[i] = ival; m->dvals[i] = dval;
    return 0;
}

/* --- a character n-gram scorer, compiled (edgeasr.decoding.fusion.CharLMScorer's arithmetic) ------
 *
 * Why: with a Python scorer every (state, token) pair a stream meets for the first time is a call
 * back into Python (tuple keys, dictionary walks); with a character LM at beam 10 that was most of
 * the search's time. Here the model is a table of n-gram nodes: a node's parent is its context, its
 * suffix the n-gram without its first symbol, and (parent, symbol) -> node is one hash lookup. A
 * scorer state is the node of the context kept (the same n-gram the Python scorer keeps as a
 * tuple), so the search's states are plain node ids, stable for the scorer's life.
 * The arithmetic is the Python scorer's, operation for operation, so scores are bit-identical. */
typedef struct {
    PyObject_HEAD
    int32_t *parent, *suffix, *symbol;
    uint8_t *depth;
    double *prob, *backoff;  /* log10 */
    size_t nodes;
    Map child;               /* (parent << 24 | symbol) -> node */
    int32_t **token_symbols; /* per token: the symbols its text spells (-1 ends) */
    Py_ssize_t tokens;
    int order, unk, eos;
    int64_t initial;
    double weight, bonus, ln10;
} NgramScorer;

static inline int32_t ngram_child(const NgramScorer *g, int32_t parent, int32_t symbol) {
    uint64_t key = ((uint64_t)(uint32_t)parent << 24) | (uint32_t)symbol;
    size_t i = map_slot(&g->child, key);
    return g->child.keys[i] == EMPTY_KEY ? -1 : (int32_t)g->child.ivals[i];
}

/* log10 P(symbol | context node) backing off, and the node kept after it (NgramLM.advance) */
static inline double ngram_advance(const NgramScorer *g, int32_t context, int32_t symbol, int32_t *state) {
    double penalty = 0.0;
    for (;;) {
        int32_t gram = ngram_child(g, context, symbol);
        if (gram >= 0) {
            *state = g->depth[gram] < g->order ? gram : g->suffix[gram];
            return penalty + g->prob[gram];
        }
        penalty += g->backoff[context];
        context = g->suffix[context];
    }
}

/* the scorer's (delta, state) for a token after a state (CharLMScorer.advance) */
static inline double ngram_token(const NgramScorer *g, int64_t state, int32_t token, int64_t *new_state) {
    double delta = 0.0;
    int32_t node = (int32_t)state;
    if (token >= 0 && token < g->tokens) {
        for (const int32_t *sym = g->token_symbols[token]; *sym >= 0; sym++) {
            int32_t next;
            double log10 = ngram_advance(g, node, *sym, &next);
            delta += g->weight * log10 * g->ln10 + g->bonus;
            node = next;
        }
    }
    *new_state = node;
    return delta;
}

static void NgramScorer_dealloc(NgramScorer *g) {
    free(g->parent); free(g->suffix); free(g->symbol); free(g->depth); free(g->prob); free(g->backoff);
    map_free(&g->child);
    if (g->token_symbols) {
        for (Py_ssize_t t = 0; t < g->tokens; t++) free(g->token_symbols[t]);
        free(g->token_symbols);
    }
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static int copy_buffer(PyObject *source, const char *format, size_t itemsize, size_t count, void **out,
                       const char *name) {
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view.itemsize != (Py_ssize_t)itemsize || (size_t)(view.len / view.itemsize) != count || !view.format ||
        strcmp(view.format, format) != 0) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "%s: %zu items of format '%s' expected", name, count, format);
        return -1;
    }
    *out = malloc(count ? view.len : 1);
    if (!*out) { PyBuffer_Release(&view); PyErr_NoMemory(); return -1; }
    memcpy(*out, view.buf, view.len);
    PyBuffer_Release(&view);
    return 0;
}

/* NgramScorer(parent, suffix, symbol, depth, prob, backoff, order, unk, eos, initial, token_symbols,
 *             weight, bonus, ln10): node arrays (int32, int32, int32, uint8, float64, float64; node 0
 * the empty context), token_symbols a list of sequences of symbol ids */
static int NgramScorer_init(NgramScorer *g, PyObject *args, PyObject *kwargs) {
    PyObject *parent, *suffix, *symbol, *depth, *prob, *backoff, *tokens;
    long long initial;
    if (!PyArg_ParseTuple(args, "OOOOOOiiiLOddd", &parent, &suffix, &symbol, &depth, &prob, &backoff, &g->order,
                          &g->unk, &g->eos, &initial, &tokens, &g->weight, &g->bonus, &g->ln10))
        return -1;
    if (g->parent) { PyErr_SetString(PyExc_RuntimeError, "NgramScorer is initialized once"); return -1; }
    Py_ssize_t n = PyObject_Length(prob);
    if (n < 1 || n >= (1 << 30)) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad node count"); return -1; }
    g->nodes = (size_t)n;
    if (copy_buffer(parent, "i", 4, g->nodes, (void **)&g->parent, "parent") < 0 ||
        copy_buffer(suffix, "i", 4, g->nodes, (void **)&g->suffix, "suffix") < 0 ||
        copy_buffer(symbol, "i", 4, g->nodes, (void **)&g->symbol, "symbol") < 0 ||
        copy_buffer(depth, "B", 1, g->nodes, (void **)&g->depth, "depth") < 0 ||
        copy_buffer(prob, "d", 8, g->nodes, (void **)&g->prob, "prob") < 0 ||
        copy_buffer(backoff, "d", 8, g->nodes, (void **)&g->backoff, "backoff") < 0)
        return -1;
    size_t cap = 1024;
    while (cap < 2 * g->nodes + 2) cap *= 2;
    if (map_init(&g->child, cap) < 0) { PyErr_NoMemory(); return -1; }
    for (size_t i = 1; i < g->nodes; i++) {
        if (g->parent[i] < 0 || (size_t)g->parent[i] >= g->nodes || g->suffix[i] < 0 ||
            (size_t)g->suffix[i] >= g->nodes || g->symbol[i] < 0 || g->symbol[i] >= (1 << 24)) {
            PyErr_SetString(PyExc_ValueError, "n-gram table: node links out of range");
            return -1;
        }
        uint64_t key = ((uint64_t)(uint32_t)g->parent[i] << 24) | (uint32_t)g->symbol[i];
        if (map_put(&g->child, key, (int64_t)i, 0.0) < 0) { PyErr_NoMemory(); return -1; }
    }
    if (initial < 0 || (size_t)initial >= g->nodes || g->eos < 0 || g->unk < 0) {
        PyErr_SetString(PyExc_ValueError, "n-gram table: initial state or symbols out of range");
        return -1;
    }
    g->initial = initial;
    PyObject *seq = PySequence_Fast(tokens, "token_symbols must be a sequence");
    if (!seq) return -1;
    g->tokens = PySequence_Fast_GET_SIZE(seq);
    g->token_symbols = calloc(g->tokens ? g->tokens : 1, sizeof(int32_t *));
    if (!g->token_symbols) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t t = 0; t < g->tokens; t++) {
        PyObject *spelled = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, t), "token_symbols[t] must be a sequence");
        if (!spelled) { Py_DECREF(seq); return -1; }
        Py_ssize_t length = PySequence_Fast_GET_SIZE(spelled);
        g->token_symbols[t] = malloc((length + 1) * sizeof(int32_t));
        if (!g->token_symbols[t]) { Py_DECREF(spelled); Py_DECREF(seq); PyErr_NoMemory(); return -1; }
        for (Py_ssize_t k = 0; k < length; k++) {
            long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(spelled, k));
            if (value < 0 || value >= (1 << 24)) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "symbol ids must be in [0, 2**24)");
                Py_DECREF(spelled); Py_DECREF(seq); return -1;
            }
            g->token_symbols[t][k] = (int32_t)value;
        }
        g->token_symbols[t][length] = -1;
        Py_DECREF(spelled);
    }
    Py_DECREF(seq);
    /* every symbol a token spells must be a unigram (the table maps unknown ones to <unk>) */
    for (Py_ssize_t t = 0; t < g->tokens; t++)
        for (const int32_t *sym = g->token_symbols[t]; *sym >= 0; sym++)
            if (ngram_child(g, 0, *sym) < 0) {
                PyErr_SetString(PyExc_ValueError, "a token spells a symbol that is not a unigram");
                return -1;
            }
    if (ngram_child(g, 0, g->eos) < 0) { PyErr_SetString(PyExc_ValueError, "</s> is not a unigram"); return -1; }
    return 0;
}

static int32_t check_state(NgramScorer *g, PyObject *value) {
    long long state = PyLong_AsLongLong(value);
    if (state == -1 && PyErr_Occurred()) return -1;
    if (state < 0 || (size_t)state >= g->nodes) { PyErr_SetString(PyExc_ValueError, "no such scorer state"); return -1; }
    return (int32_t)state;
}

static PyObject *NgramScorer_advance(NgramScorer *g, PyObject *args) {
    PyObject *value;
    int token;
    if (!PyArg_ParseTuple(args, "Oi", &value, &token)) return NULL;
    int32_t state = check_state(g, value);
    if (state < 0) return NULL;
    int64_t next;
    double delta = ngram_token(g, state, token, &next);
    return Py_BuildValue("(dL)", delta, (long long)next);
}

/* finish(state): weight * ln P(</s> | state) (CharLMScorer.finish) */
static PyObject *NgramScorer_finish(NgramScorer *g, PyObject *value) {
    int32_t state = check_state(g, value);
    if (state < 0) return NULL;
    int32_t unused;
    double log10 = ngram_advance(g, state, g->eos, &unused);
    return PyFloat_FromDouble(g->weight * (log10 * g->ln10));
}

/* context(state): the symbol ids of the state's n-gram, oldest first */
static PyObject *NgramScorer_context(NgramScorer *g, PyObject *value) {
    int32_t state = check_state(g, value);
    if (state < 0) return NULL;
    PyObject *out = PyTuple_New(g->depth[state]);
    if (!out) return NULL;
    for (int32_t node = state, at = g->depth[state]; node > 0; node = g->parent[node])
        PyTuple_SET_ITEM(out, --at, PyLong_FromLong(g->symbol[node]));
    return out;
}

static PyObject *NgramScorer_get_initial(NgramScorer *g, void *closure) { return PyLong_FromLongLong(g->initial); }
static PyObject *NgramScorer_get_nodes(NgramScorer *g, void *closure) { return PyLong_FromSize_t(g->nodes); }

static PyMethodDef NgramScorer_methods[] = {
    {"advance", (PyCFunction)NgramScorer_advance, METH_VARARGS, "(state, token) -> (delta, new state)"},
    {"finish", (PyCFunction)NgramScorer_finish, METH_O, "the end-of-text score after a state"},
    {"context", (PyCFunction)NgramScorer_context, METH_O, "the symbol ids of a state's n-gram"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef NgramScorer_getset[] = {
    {"initial", (getter)NgramScorer_get_initial, NULL, "the state before any text (<s>)", NULL},
    {"nodes", (getter)NgramScorer_get_nodes, NULL, "n-gram nodes held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject NgramScorerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgeasr._native.NgramScorer",
    .tp_basicsize = sizeof(NgramScorer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a character n-gram LM scorer over token ids (see edgeasr.decoding.fusion.CharLMScorer)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)NgramScorer_init,
    .tp_dealloc = (destructor)NgramScorer_dealloc,
    .tp_methods = NgramScorer_methods,
    .tp_getset = NgramScorer_getset,
};

/* --- growable arrays ----------------------------------------------------------------------------- */
#define GROW(ptr, cap, need, type) do { \
    if ((need) > (cap)) { size_t c_ = (cap) ? (cap) : 64; while (c_ < (need)) c_ *= 2; \
        type *p_ = realloc((ptr), c_ * sizeof(type)); if (!p_) { PyErr_NoMemory(); return -1; } \
        (ptr) = p_; (cap) = c_; } } while (0)

typedef struct {
    int32_t node;
    double blank, nonblank, total, fused, last_peak;
    int64_t state;
    int32_t emitted;  /* emission cell, -1: none */
} Beam;

typedef struct {
    double blank, nonblank, lp, fused;
    int32_t source;  /* index of the beam it came from */
    int32_t token;   /* -1: the source's own prefix */
    int32_t node;
    int64_t state;
    double score;
} Entry;

typedef struct {
    PyObject_HEAD
    int beam_size, blank, token_beam;
    double token_threshold, score_threshold;
    PyObject *advance;  /* callable(state, token) -> (delta, new state), an NgramScorer, or None */
    NgramScorer *compiled;  /* advance when it is an NgramScorer: asked directly, never cached */
    /* trie */
    int32_t *parent, *token;
    size_t nodes, nodes_cap;
    Map children;
    /* emissions */
    int32_t *em_frame, *em_prev;
    double *em_prob;
    size_t cells, cells_cap;
    /* beams */
    Beam *beams, *next;
    size_t nbeams, beams_cap, next_cap;
    /* per-frame work */
    Entry *entries;
    size_t entries_cap;
    Map acc;
    int32_t *order;
    size_t order_cap;
    Map cache;  /* (state << 24 | token) -> (new state, delta) */
    long long frame_offset;
    size_t compact_after, cells_limit, cache_limit;
    /* compaction thresholds: the limits, or twice what survived the last compaction when the live
     * beams themselves need more (a long unsegmented stream), so it never runs every frame */
    size_t nodes_trigger, cells_trigger;
} Search;

static const double NEG_INF = -INFINITY;

static inline double logadd(double a, double b) {
    if (a < b) { double t = a; a = b; b = t; }
    if (b == NEG_INF) return a;
    return a + log1p(exp(b - a));
}

static int add_node(Search *s, int32_t parent, int32_t token) {
    if (s->nodes + 1 > s->nodes_cap) {
        size_t cap = s->nodes_cap ? 2 * s->nodes_cap : 1024;
        int32_t *p = realloc(s->parent, cap * sizeof(int32_t));
        if (!p) { PyErr_NoMemory(); return -1; }
        s->parent = p;
        int32_t *t = realloc(s->token, cap * sizeof(int32_t));
        if (!t) { PyErr_NoMemory(); return -1; }
        s->token = t;
        s->nodes_cap = cap;
    }
    s->parent[s->nodes] = parent;
    s->token[s->nodes] = token;
    return (int)(s->nodes++);
}

static int32_t child_of(Search *s, int32_t node, int32_t token) {
    uint64_t key = ((uint64_t)(uint32_t)node << 32) | (uint32_t)token;
    size_t i = map_slot(&s->children, key);
    if (s->children.keys[i] != EMPTY_KEY) return (int32_t)s->children.ivals[i];
    int id = add_node(s, node, token);
    if (id < 0) return -1;
    if (map_put(&s->children, key, id, 0.0) < 0) { PyErr_NoMemory(); return -1; }
    return id;
}

static int32_t add_cell(Search *s, int32_t frame, double prob, int32_t prev) {
    if (s->cells + 1 > s->cells_cap) {
        size_t cap = s->cells_cap ? 2 * s->cells_cap : 1024;
        int32_t *f = realloc(s->em_frame, cap * sizeof(int32_t));
        if (!f) { PyErr_NoMemory(); return -1; }
        s->em_frame = f;
        int32_t *p = realloc(s->em_prev, cap * sizeof(int32_t));
        if (!p) { PyErr_NoMemory(); return -1; }
        s->em_prev = p;
        double *q = realloc(s->em_prob, cap * sizeof(double));
        if (!q) { PyErr_NoMemory(); return -1; }
        s->em_prob = q;
        s->cells_cap = cap;
    }
    s->em_frame[s->cells] = frame; s->em_prob[s->cells] = prob; s->em_prev[s->cells] = prev;
    return (int32_t)(s->cells++);
}

static int reset_state(Search *s, int64_t initial_state) {
    s->nodes = 0;
    map_clear(&s->children);
    if (add_node(s, -1, -1) < 0) return -1;
    s->cells = 0;
    GROW(s->beams, s->beams_cap, 1, Beam);
    s->beams[0] = (Beam){0, 0.0, NEG_INF, 0.0, 0.0, NEG_INF, initial_state, -1};
    s->nbeams = 1;
    map_clear(&s->cache);
    s->frame_offset = 0;
    s->nodes_trigger = s->compact_after;
    s->cells_trigger = s->cells_limit;
    return 0;
}

/* the fused scorer's (delta, state) for token after state: cached, else asked of Python */
static int fused(Search *s, int64_t state, int32_t token, double *delta, int64_t *new_state) {
    if (s->compiled) { *delta = ngram_token(s->compiled, state, token, new_state); return 0; }
    uint64_t key = ((uint64_t)state << 24) | (uint32_t)token;
    size_t i = map_slot(&s->cache, key);
    if (s->cache.keys[i] != EMPTY_KEY) { *delta = s->cache.dvals[i]; *new_state = s->cache.ivals[i]; return 0; }
    PyObject *result = PyObject_CallFunction(s->advance, "Li", (long long)state, (int)token);
    if (!result) return -1;
    double d; long long ns;
    if (!PyArg_ParseTuple(result, "dL", &d, &ns)) { Py_DECREF(result); return -1; }
    Py_DECREF(result);
    if (s->cache.count > s->cache_limit) map_clear(&s->cache);
    if (map_put(&s->cache, key, ns, d) < 0) { PyErr_NoMemory(); return -1; }
    *delta = d; *new_state = ns;
    return 0;
}

/* Keep only the trie nodes (and emission cells) the live beams need. */
static int compact(Search *s) {
    if (s->nodes > s->nodes_trigger) {
        int32_t *mapping = malloc(s->nodes * sizeof(int32_t));
        int32_t *old_parent = s->parent, *old_token = s->token;
        size_t old_nodes = s->nodes;
        int32_t *path = malloc(old_nodes * sizeof(int32_t));
        if (!mapping || !path) { free(mapping); free(path); PyErr_NoMemory(); return -1; }
        for (size_t i = 0; i < old_nodes; i++) mapping[i] = -1;
        s->parent = NULL; s->token = NULL; s->nodes = 0; s->nodes_cap = 0;
        map_clear(&s->children);
        int ok = add_node(s, -1, -1) >= 0;
        mapping[0] = 0;
        for (size_t b = 0; ok && b < s->nbeams; b++) {
            int32_t node = s->beams[b].node;
            size_t depth = 0;
            while (mapping[node] < 0) { path[depth++] = node; node = old_parent[node]; }
            while (ok && depth > 0) {
                int32_t old = path[--depth];
                int32_t id = child_of(s, mapping[old_parent[old]], old_token[old]);
                if (id < 0) ok = 0; else mapping[old] = id;
            }
            if (ok) s->beams[b].node = mapping[s->beams[b].node];
        }
        free(mapping); free(path); free(old_parent); free(old_token);
        if (!ok) return -1;
        s->nodes_trigger = s->compact_after > 2 * s->nodes ? s->compact_after : 2 * s->nodes;
    }
    if (s->cells > s->cells_trigger) {
        int32_t *mapping = malloc(s->cells * sizeof(int32_t));
        int32_t *frame = s->em_frame, *prev = s->em_prev;
        double *prob = s->em_prob;
        size_t old_cells = s->cells;
        int32_t *path = malloc(old_cells * sizeof(int32_t));
        if (!mapping || !path) { free(mapping); free(path); PyErr_NoMemory(); return -1; }
        for (size_t i = 0; i < old_cells; i++) mapping[i] = -1;
        s->em_frame = NULL; s->em_prev = NULL; s->em_prob = NULL; s->cells = 0; s->cells_cap = 0;
        int ok = 1;
        for (size_t b = 0; ok && b < s->nbeams; b++) {
            int32_t cell = s->beams[b].emitted;
            size_t depth = 0;
            while (cell >= 0 && mapping[cell] < 0) { path[depth++] = cell; cell = prev[cell]; }
            while (ok && depth > 0) {
                int32_t old = path[--depth];
                int32_t before = prev[old] >= 0 ? mapping[prev[old]] : -1;
                int32_t id = add_cell(s, frame[old], prob[old], before);
                if (id < 0) ok = 0; else mapping[old] = id;
            }
            if (ok && s->beams[b].emitted >= 0) s->beams[b].emitted = mapping[s->beams[b].emitted];
        }
        free(mapping); free(path); free(frame); free(prev); free(prob);
        if (!ok) return -1;
        s->cells_trigger = s->cells_limit > 2 * s->cells ? s->cells_limit : 2 * s->cells;
    }
    return 0;
}

/* one frame: candidates are (token, lp) pairs best first, already within the threshold */
static int frame_step(Search *s, const int32_t *cand_tok, const double *cand_lp, int ncand, int32_t frame) {
    int blank = s->blank;
    if (ncand == 1 && cand_tok[0] == blank) {
        double lp = cand_lp[0];
        for (size_t i = 0; i < s->nbeams; i++) {
            Beam *b = &s->beams[i];
            b->blank = b->total + lp;
            b->nonblank = NEG_INF;
            b->total = b->blank;
        }
        return 0;
    }
    /* at most one entry per beam for its own prefix and one per candidate token: the array is
     * sized once here, so pointers into it stay valid through the frame */
    size_t need = s->nbeams * (size_t)(ncand + 1);
    GROW(s->entries, s->entries_cap, need, Entry);
    if (s->acc.cap < 4 * need) {
        map_free(&s->acc);
        size_t cap = 64;
        while (cap < 4 * need) cap *= 2;
        if (map_init(&s->acc, cap) < 0) { PyErr_NoMemory(); return -1; }
    } else {
        map_clear(&s->acc);
    }
    size_t count = 0;
    for (size_t i = 0; i < s->nbeams; i++) {
        Beam *beam = &s->beams[i];
        int32_t node = beam->node, last = s->token[node];
        double b = beam->blank, nb = beam->nonblank, total = beam->total;
        Entry *entry = NULL;
        for (int c = 0; c < ncand; c++) {
            int32_t token = cand_tok[c];
            double lp = cand_lp[c], source;
            if (token == blank || token == last) {
                if (entry == NULL) {
                    size_t slot = map_slot(&s->acc, (uint64_t)node);
                    if (s->acc.keys[slot] != EMPTY_KEY) {
                        entry = &s->entries[s->acc.ivals[slot]];
                    } else {
                        s->acc.keys[slot] = (uint64_t)node; s->acc.ivals[slot] = (int64_t)count; s->acc.count++;
                        entry = &s->entries[count++];
                        *entry = (Entry){NEG_INF, NEG_INF, NEG_INF, beam->fused, (int32_t)i, -1, node, beam->state, 0.0};
                    }
                }
                if (token == blank) { entry->blank = logadd(entry->blank, total + lp); continue; }
                entry->nonblank = logadd(entry->nonblank, nb + lp);
                if (entry->token == -1 && lp > entry->lp) entry->lp = lp;
                if (b == NEG_INF) continue;
                source = b;
            } else {
                source = total;
            }
            int32_t extended = child_of(s, node, token);
            if (extended < 0) return -1;
            size_t slot = map_slot(&s->acc, (uint64_t)extended);
            if (s->acc.keys[slot] != EMPTY_KEY) {
                Entry *other = &s->entries[s->acc.ivals[slot]];
                other->nonblank = logadd(other->nonblank, source + lp);
                continue;
            }
            double delta = 0.0, f = 0.0;
            int64_t state = 0;
            if (s->advance != Py_None) {
                if (fused(s, beam->state, token, &delta, &state) < 0) return -1;
                f = beam->fused + delta;
            }
            /* the fused call may not touch acc or entries, so slot and count hold */
            s->acc.keys[slot] = (uint64_t)extended; s->acc.ivals[slot] = (int64_t)count; s->acc.count++;
            s->entries[count++] = (Entry){NEG_INF, source + lp, lp, f, (int32_t)i, token, extended, state, 0.0};
        }
    }
    double best = NEG_INF;
    for (size_t e = 0; e < count; e++) {
        Entry *en = &s->entries[e];
        en->score = logadd(en->blank, en->nonblank) + en->fused;
    }
    GROW(s->order, s->order_cap, count, int32_t);
    size_t kept = count;
    for (size_t e = 0; e < count; e++) s->order[e] = (int32_t)e;
    if (count > (size_t)s->beam_size) {
        /* stable: best score first, ties in insertion order (heapq.nlargest's order) */
        for (size_t a = 1; a < count; a++) {
            int32_t item = s->order[a];
            double score = s->entries[item].score;
            size_t j = a;
            while (j > 0 && s->entries[s->order[j - 1]].score < score) { s->order[j] = s->order[j - 1]; j--; }
            s->order[j] = item;
        }
        kept = (size_t)s->beam_size;
    }
    for (size_t k = 0; k < kept; k++) {
        double score = s->entries[s->order[k]].score;
        if (k == 0 || score > best) best = score;
    }
    double cut = best - s->score_threshold;
    GROW(s->next, s->next_cap, kept, Beam);
    size_t n = 0;
    for (size_t k = 0; k < kept; k++) {
        Entry *en = &s->entries[s->order[k]];
        if (en->score < cut) continue;
        Beam *source = &s->beams[en->source];
        Beam beam;
        beam.node = en->node; beam.blank = en->blank; beam.nonblank = en->nonblank;
        beam.state = en->state; beam.fused = en->fused;
        if (en->token == -1) {
            int32_t emitted = source->emitted;
            double peak = source->last_peak;
            if (en->lp > peak && emitted >= 0) {
                int32_t cell = add_cell(s, frame, exp(en->lp), s->em_prev[emitted]);
                if (cell < 0) return -1;
                emitted = cell;
                peak = en->lp;
            }
            beam.emitted = emitted; beam.last_peak = peak;
        } else {
            int32_t cell = add_cell(s, frame, exp(en->lp), source->emitted);
            if (cell < 0) return -1;
            beam.emitted = cell; beam.last_peak = en->lp;
        }
        beam.total = en->score - en->fused;
        s->next[n++] = beam;
    }
    Beam *t = s->beams; s->beams = s->next; s->next = t;
    size_t tc = s->beams_cap; s->beams_cap = s->next_cap; s->next_cap = tc;
    s->nbeams = n;
    return 0;
}

/* --- Python type --------------------------------------------------------------------------------- */
static void Search_dealloc(Search *s) {
    Py_XDECREF(s->advance);
    free(s->parent); free(s->token); map_free(&s->children);
    free(s->em_frame); free(s->em_prev); free(s->em_prob);
    free(s->beams); free(s->next); free(s->entries); free(s->order);
    map_free(&s->acc); map_free(&s->cache);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int Search_init(Search *s, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"beam_size", "blank", "token_beam", "token_threshold", "score_threshold",
                            "advance", "initial_state", "compact_after", NULL};
    PyObject *advance = Py_None;
    long long initial_state = 0;
    Py_ssize_t compact_after = 200000;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiddOL|n", names, &s->beam_size, &s->blank,
                                     &s->token_beam, &s->token_threshold, &s->score_threshold, &advance,
                                     &initial_state, &compact_after))
        return -1;
    if (s->beam_size < 1 || s->token_beam < 1) {
        PyErr_SetString(PyExc_ValueError, "beam_size and token_beam must be at least 1");
        return -1;
    }
    int compiled = PyObject_TypeCheck(advance, &NgramScorerType);
    if (advance != Py_None && !compiled && !PyCallable_Check(advance)) {
        PyErr_SetString(PyExc_TypeError, "advance must be callable, an NgramScorer or None");
        return -1;
    }
    Py_INCREF(advance);
    Py_XSETREF(s->advance, advance);
    s->compiled = compiled ? (NgramScorer *)advance : NULL;
    s->compact_after = (size_t)compact_after;
    s->cells_limit = 4 * (size_t)compact_after;
    s->cache_limit = (size_t)compact_after;
    if (!s->children.keys && map_init(&s->children, 1024) < 0) { PyErr_NoMemory(); return -1; }
    if (!s->cache.keys && map_init(&s->cache, 1024) < 0) { PyErr_NoMemory(); return -1; }
    if (!s->acc.keys && map_init(&s->acc, 256) < 0) { PyErr_NoMemory(); return -1; }
    return reset_state(s, initial_state);
}

static PyObject *Search_reset(Search *s, PyObject *args) {
    long long initial_state = 0;
    if (!PyArg_ParseTuple(args, "L", &initial_state)) return NULL;
    if (reset_state(s, initial_state) < 0) return NULL;
    Py_RETURN_NONE;
}

/* step(log_probs): a C-contiguous float32 buffer [T, V] (numpy array) */
static PyObject *Search_step(Search *s, PyObject *args) {
    Py_buffer view;
    PyObject *array;
    if (!PyArg_ParseTuple(args, "O", &array)) return NULL;
    if (PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    PyObject *result = NULL;
    if (view.ndim != 2 || view.itemsize != 4 || !view.format || strcmp(view.format, "f") != 0) {
        PyErr_SetString(PyExc_ValueError, "log_probs must be a C-contiguous float32 array [T, V]");
        goto done;
    }
    Py_ssize_t frames = view.shape[0], vocab = view.shape[1];
    if (frames == 0) { result = Py_None; Py_INCREF(result); goto done; }
    int k = s->token_beam < vocab ? s->token_beam : (int)vocab;
    int32_t *top_tok = malloc(k * sizeof(int32_t));
    double *top_lp = malloc(k * sizeof(double));
    if (!top_tok || !top_lp) { free(top_tok); free(top_lp); PyErr_NoMemory(); goto done; }
    const float *data = (const float *)view.buf;
    for (Py_ssize_t t = 0; t < frames; t++) {
        const float *row = data + t * vocab;
        /* the k best, best first; ties: lower token first */
        int have = 0;
        for (Py_ssize_t v = 0; v < vocab; v++) {
            double value = row[v];
            if (have == k && !(value > top_lp[k - 1])) continue;
            int j = have < k ? have++ : k - 1;
            while (j > 0 && top_lp[j - 1] < value) { top_lp[j] = top_lp[j - 1]; top_tok[j] = top_tok[j - 1]; j--; }
            top_lp[j] = value; top_tok[j] = (int32_t)v;
        }
        double floor = top_lp[0] - s->token_threshold;
        int ncand = 0;
        while (ncand < have && top_lp[ncand] >= floor) ncand++;
        if (frame_step(s, top_tok, top_lp, ncand, (int32_t)(s->frame_offset + t)) < 0) {
            free(top_tok); free(top_lp); goto done;
        }
    }
    free(top_tok); free(top_lp);
    s->frame_offset += frames;
    if (compact(s) < 0) goto done;
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&view);
    return result;
}

/* beams(): [(tokens, total, fused, state, times, probs)] in beam order */
static PyObject *Search_beams(Search *s, PyObject *unused) {
    PyObject *out = PyList_New((Py_ssize_t)s->nbeams);
    if (!out) return NULL;
    for (size_t i = 0; i < s->nbeams; i++) {
        Beam *b = &s->beams[i];
        Py_ssize_t length = 0, emissions = 0;
        for (int32_t node = b->node; node > 0; node = s->parent[node]) length++;
        for (int32_t cell = b->emitted; cell >= 0; cell = s->em_prev[cell]) emissions++;
        PyObject *tokens = PyTuple_New(length), *times = PyTuple_New(emissions), *probs = PyTuple_New(emissions);
        if (!tokens || !times || !probs) goto fail_item;
        Py_ssize_t at = length;
        for (int32_t node = b->node; node > 0; node = s->parent[node])
            PyTuple_SET_ITEM(tokens, --at, PyLong_FromLong(s->token[node]));
        at = emissions;
        for (int32_t cell = b->emitted; cell >= 0; cell = s->em_prev[cell]) {
            --at;
            PyTuple_SET_ITEM(times, at, PyLong_FromLong(s->em_frame[cell]));
            PyTuple_SET_ITEM(probs, at, PyFloat_FromDouble(s->em_prob[cell]));
        }
        PyObject *item = Py_BuildValue("(NddLNN)", tokens, b->total, b->fused, (long long)b->state, times, probs);
        if (!item) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        continue;
    fail_item:
        Py_XDECREF(tokens); Py_XDECREF(times); Py_XDECREF(probs); Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* states(): the scorer states of the live beams (to keep when the wrapper re-interns) */
static PyObject *Search_states(Search *s, PyObject *unused) {
    PyObject *out = PyList_New((Py_ssize_t)s->nbeams);
    if (!out) return NULL;
    for (size_t i = 0; i < s->nbeams; i++) PyList_SET_ITEM(out, (Py_ssize_t)i, PyLong_FromLongLong(s->beams[i].state));
    return out;
}

/* remap_states(new_ids): beam i's state becomes new_ids[i]; the (state, token) cache is dropped */
static PyObject *Search_remap_states(Search *s, PyObject *args) {
    PyObject *ids;
    if (!PyArg_ParseTuple(args, "O", &ids)) return NULL;
    PyObject *seq = PySequence_Fast(ids, "new_ids must be a sequence");
    if (!seq) return NULL;
    if ((size_t)PySequence_Fast_GET_SIZE(seq) != s->nbeams) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "one new state per live beam");
        return NULL;
    }
    for (size_t i = 0; i < s->nbeams; i++) {
        long long value = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i));
        if (value == -1 && PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
        s->beams[i].state = value;
    }
    Py_DECREF(seq);
    map_clear(&s->cache);
    Py_RETURN_NONE;
}

static PyObject *Search_get_frame_offset(Search *s, void *closure) { return PyLong_FromLongLong(s->frame_offset); }
static PyObject *Search_get_nodes(Search *s, void *closure) { return PyLong_FromSize_t(s->nodes); }
static PyObject *Search_get_cells(Search *s, void *closure) { return PyLong_FromSize_t(s->cells); }

static PyMethodDef Search_methods[] = {
    {"step", (PyCFunction)Search_step, METH_VARARGS, "consume log-probs [T, V] (float32, C order)"},
    {"reset", (PyCFunction)Search_reset, METH_VARARGS, "start again from the empty prefix with the given scorer state"},
    {"beams", (PyCFunction)Search_beams, METH_NOARGS, "the live beams: (tokens, total, fused, state, times, probs)"},
    {"states", (PyCFunction)Search_states, METH_NOARGS, "the live beams' scorer states"},
    {"remap_states", (PyCFunction)Search_remap_states, METH_VARARGS, "new scorer state ids for the live beams"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Search_getset[] = {
    {"frame_offset", (getter)Search_get_frame_offset, NULL, "frames consumed", NULL},
    {"nodes", (getter)Search_get_nodes, NULL, "prefix-trie nodes held", NULL},
    {"cells", (getter)Search_get_cells, NULL, "emission cells held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SearchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgeasr._native.Search",
    .tp_basicsize = sizeof(Search),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CTC prefix beam search core (see edgeasr.decoding.ctc.PrefixBeamSearch)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Search_init,
    .tp_dealloc = (destructor)Search_dealloc,
    .tp_methods = Search_methods,
    .tp_getset = Search_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "edgeasr's compiled parts: the CTC prefix search core", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&SearchType) < 0 || PyType_Ready(&NgramScorerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SearchType);
    if (PyModule_AddObject(m, "Search", (PyObject *)&SearchType) < 0) {
        Py_DECREF(&SearchType); Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&NgramScorerType);
    if (PyModule_AddObject(m, "NgramScorer", (PyObject *)&NgramScorerType) < 0) {
        Py_DECREF(&NgramScorerType); Py_DECREF(m);
        return NULL;
    }
    return m;
}
