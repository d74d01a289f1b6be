/*
 * Exact preemption for vCPU engines: Unicorn hooks written in C that end a time slice at an
 * instruction boundary.
 *
 * Why: Unicorn's own timeout stops the engine from another thread at any point, and when the
 * stop lands at the start of a chained translation block the saved RIP is stale, so resuming
 * executes instructions a second time (unicorn issues #1105, #1565): a guest's result would
 * depend on where the timer fired. A block hook is generated in front of the block's exit check,
 * so uc_emu_stop called from it leaves the block unexecuted with RIP at its first instruction;
 * a code hook does the same per instruction. Both run in C, so counting costs a call per block
 * (or per instruction while single-stepping), not a trip through Python.
 *
 * Budget(emu_stop_address) holds one slice's budget in C memory:
 *   blocks_left        translation blocks the slice may still start
 *   instructions_left  instructions it may still start (only while the code hook is installed)
 *   deadline_ns        CLOCK_MONOTONIC time at which it ends (0: none), checked every 256 blocks
 *   expired            set when the slice ended here (budget or deadline), cleared by Python
 *   blocks             blocks started in this engine, ever (statistics)
 * hooks() returns (block hook, code hook, user data) addresses for uc_hook_add.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <time.h>

typedef int (*emu_stop_fn)(void *uc);

typedef struct {
    PyObject_HEAD
    long long blocks_left;
    long long instructions_left;
    long long deadline_ns;
    char expired;
    unsigned long long blocks;
    emu_stop_fn emu_stop;
} Budget;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void end_slice(void *uc, Budget *q)
{
    q->expired = 1;
    q->emu_stop(uc);
}

static void on_block(void *uc, uint64_t address, uint32_t size, void *data)
{
    Budget *q = data;
    (void)address;
    (void)size;
    if (q->expired || q->blocks_left <= 0
        || (q->deadline_ns && (q->blocks & 0xFF) == 0 && now_ns() >= q->deadline_ns)) {
        end_slice(uc, q);
        return;
    }
    q->blocks_left--;
    q->blocks++;
}

static void on_instruction(void *uc, uint64_t address, uint32_t size, void *data)
{
    Budget *q = data;
    (void)address;
    (void)size;
    if (q->expired || q->instructions_left <= 0) {
        end_slice(uc, q);
        return;
    }
    q->instructions_left--;
}

static int budget_init(Budget *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"emu_stop_address", NULL};
    unsigned long long address;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "K", names, &address))
        return -1;
    if (!address) {
        PyErr_SetString(PyExc_ValueError, "uc_emu_stop's address is needed");
        return -1;
    }
    self->emu_stop = (emu_stop_fn)(uintptr_t)address;
    return 0;
}

static PyObject *budget_hooks(Budget *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("(KKK)", (unsigned long long)(uintptr_t)on_block,
                         (unsigned long long)(uintptr_t)on_instruction,
                         (unsigned long long)(uintptr_t)self);
}

static PyMemberDef budget_members[] = {
    {"blocks_left", T_LONGLONG, offsetof(Budget, blocks_left), 0,
     "translation blocks the slice may still start"},
    {"instructions_left", T_LONGLONG, offsetof(Budget, instructions_left), 0,
     "instructions the slice may still start (code hook installed)"},
    {"deadline_ns", T_LONGLONG, offsetof(Budget, deadline_ns), 0,
     "CLOCK_MONOTONIC nanoseconds at which the slice ends; 0 for none"},
    {"expired", T_BOOL, offsetof(Budget, expired), 0, "the slice ended (budget or deadline)"},
    {"blocks", T_ULONGLONG, offsetof(Budget, blocks), READONLY, "blocks started, ever"},
    {NULL},
};

static PyMethodDef budget_methods[] = {
    {"hooks", (PyCFunction)budget_hooks, METH_NOARGS,
     "(block hook, code hook, user data): addresses to pass to uc_hook_add"},
    {NULL},
};

static PyTypeObject BudgetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sevsim.hw._quantum.Budget",
    .tp_doc = "One vCPU's time-slice budget, read by its C hooks.",
    .tp_basicsize = sizeof(Budget),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)budget_init,
    .tp_members = budget_members,
    .tp_methods = budget_methods,
};

static PyObject *monotonic_ns(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLongLong(now_ns());
}

static PyMethodDef module_methods[] = {
    {"monotonic_ns", monotonic_ns, METH_NOARGS, "the clock deadline_ns is compared with"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_quantum", "Exact, C-counted time slices for Unicorn vCPUs.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__quantum(void)
{
    if (PyType_Ready(&BudgetType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BudgetType);
    if (PyModule_AddObject(m, "Budget", (PyObject *)&BudgetType) < 0) {
        Py_DECREF(&BudgetType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
