// pipeline.files._fpng: a thin Python binding of fpng (Rich Geldreich's fast 24/32bpp
// PNG writer and reader, vendored unchanged beside this file: fpng.cpp, fpng.h, v1.0.6).
//
// Why our own binding: the ones on PyPI (fpng, fpng-py) hold the GIL for the whole
// encode, so writer threads would take turns with each other and with the thread that
// queues the GPU's kernels. Here both calls release it around fpng's work and around the
// copy of the result into the Python object; only the allocation holds it.
//
// Built with Python's stable ABI (3.11+), so one build serves every later Python.

#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#define FPNG_NO_STDIO 1
#if defined(__x86_64__) && defined(__GNUC__)
// fpng's SSE 4.1 and PCLMUL paths (its CRC-32, Adler-32 and match finding) without
// x86-only compiler flags in pyproject.toml; fpng_init() checks the CPU at run time.
#pragma GCC push_options
#pragma GCC target("sse4.1,pclmul")
#include "fpng.cpp"
#pragma GCC pop_options
#else
#include "fpng.cpp"
#endif

// encode(pixels, width, height, channels, slower) -> bytes
static PyObject* encode(PyObject*, PyObject* args) {
    Py_buffer pixels;
    unsigned int width, height, channels;
    int slower;
    if (!PyArg_ParseTuple(args, "y*IIIp", &pixels, &width, &height, &channels, &slower))
        return nullptr;
    if (channels != 3 && channels != 4) {
        PyBuffer_Release(&pixels);
        PyErr_Format(PyExc_ValueError, "fpng writes 3 or 4 channels, not %u", channels);
        return nullptr;
    }
    if ((unsigned long long)pixels.len != (unsigned long long)width * height * channels) {
        PyBuffer_Release(&pixels);
        PyErr_SetString(PyExc_ValueError, "the pixel buffer's size is not width x height x channels bytes");
        return nullptr;
    }
    std::vector<uint8_t> png;
    bool ok;
    Py_BEGIN_ALLOW_THREADS
    ok = fpng::fpng_encode_image_to_memory(pixels.buf, width, height, channels, png,
                                            slower ? fpng::FPNG_ENCODE_SLOWER : 0);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&pixels);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "fpng could not encode the frame");
        return nullptr;
    }
    PyObject* result = PyBytes_FromStringAndSize(nullptr, (Py_ssize_t)png.size());
    if (!result)
        return nullptr;
    char* out = PyBytes_AsString(result);
    Py_BEGIN_ALLOW_THREADS
    memcpy(out, png.data(), png.size());
    Py_END_ALLOW_THREADS
    return result;
}

// decode(png) -> (bytearray of RGB pixels, width, height), or None when fpng did not
// write the file (then a general PNG decoder must read it).
static PyObject* decode(PyObject*, PyObject* args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return nullptr;
    if ((unsigned long long)data.len > UINT32_MAX) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    std::vector<uint8_t> pixels;
    uint32_t width = 0, height = 0, channels_in_file = 0;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = fpng::fpng_decode_memory(data.buf, (uint32_t)data.len, pixels, width, height, channels_in_file, 3);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (status != fpng::FPNG_DECODE_SUCCESS)
        Py_RETURN_NONE;
    PyObject* buffer = PyByteArray_FromStringAndSize(nullptr, (Py_ssize_t)pixels.size());
    if (!buffer)
        return nullptr;
    char* out = PyByteArray_AsString(buffer);
    Py_BEGIN_ALLOW_THREADS
    memcpy(out, pixels.data(), pixels.size());
    Py_END_ALLOW_THREADS
    PyObject* result = Py_BuildValue("(NII)", buffer, width, height);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(pixels, width, height, channels, slower) -> PNG bytes; 8-bit RGB or RGBA rows, "
     "packed. slower: per-file Huffman tables (smaller files, slower)."},
    {"decode", decode, METH_VARARGS,
     "decode(png) -> (RGB bytearray, width, height), or None when fpng did not write it."},
    {nullptr, nullptr, 0, nullptr},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fpng", nullptr, -1, methods,
                                    nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__fpng(void) {
    fpng::fpng_init();
    return PyModule_Create(&module);
}
