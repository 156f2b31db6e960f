/*===- runtime.h - The saec host runtime: arrays, files, models -----------===*
 *
 * The C11 host API of libsae_runtime. It reads and writes the array files
 * that SAE tooling exchanges (.npy, .npz, .safetensors), loads a
 * saec-compiled model library (see abi.h) and saves/loads its checkpoints.
 *
 * Conventions
 *  - Every function that can fail returns an sae_rt_status. On failure,
 *    sae_rt_last_error() gives a message naming the file involved; outputs
 *    are left untouched (or zeroed), and nothing is leaked.
 *  - No function aborts the process or throws.
 *  - Names are sae_rt_<noun>_<verb>.
 *
 * This header is C11; it includes nothing from C++.
 *===----------------------------------------------------------------------===*/
#ifndef SAE_RUNTIME_RUNTIME_H
#define SAE_RUNTIME_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "sae/runtime/abi.h"

#if defined(__GNUC__)
#define SAE_RT_API __attribute__((visibility("default")))
#else
#define SAE_RT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/*===-------------------------- Status ----------------------------------===*/

typedef enum {
  SAE_RT_OK = 0,
  SAE_RT_ERR_IO,     /* a file could not be opened, read or written */
  SAE_RT_ERR_FORMAT, /* a file is malformed or uses an unsupported feature */
  SAE_RT_ERR_SHAPE,  /* an array does not have the expected shape/dtype */
  SAE_RT_ERR_ABI,    /* a model library violates or mismatches abi.h */
  SAE_RT_ERR_ARG,    /* an invalid argument was passed by the caller */
  SAE_RT_ERR_NOMEM,  /* an allocation failed or a size overflowed */
  SAE_RT_ERR_EXEC,   /* a model entry point reported a failure */
  /* Not statuses: make the type span int32 so any int a C caller passes is
     a valid value of it. */
  SAE_RT_STATUS_RANGE_MIN_ = -0x7fffffff - 1,
  SAE_RT_STATUS_RANGE_MAX_ = 0x7fffffff
} sae_rt_status;

/// A short constant description of `status` ("ok", "I/O error", ...).
SAE_RT_API const char *sae_rt_status_string(sae_rt_status status);

/// The message of the last failure on the calling thread ("" if none). It
/// stays valid until the next failing call on the same thread. Successful
/// calls do not clear it.
SAE_RT_API const char *sae_rt_last_error(void);

/*===-------------------------- Arrays ----------------------------------===*/

typedef enum {
  SAE_RT_DTYPE_FLOAT32 = 0,
  SAE_RT_DTYPE_INT32 = 1,
  SAE_RT_DTYPE_FLOAT16 = 2,
  SAE_RT_DTYPE_BFLOAT16 = 3,
  /* Not dtypes: see sae_rt_status. */
  SAE_RT_DTYPE_RANGE_MIN_ = -0x7fffffff - 1,
  SAE_RT_DTYPE_RANGE_MAX_ = 0x7fffffff
} sae_rt_dtype;

#define SAE_RT_MAX_NDIM 8

/// A dense row-major array. `data` is owned (malloc'd, 64-byte aligned) when
/// the array comes from this library; release it with sae_rt_array_free().
/// Arrays passed *into* the library (e.g. to writers) may point anywhere.
/// An array with zero elements may have data == NULL.
typedef struct sae_rt_array {
  sae_rt_dtype dtype;
  int32_t ndim; /* 0 <= ndim <= SAE_RT_MAX_NDIM */
  int64_t shape[SAE_RT_MAX_NDIM];
  void *data;
} sae_rt_array;

/// Element size in bytes (4, 4, 2, 2); 0 for an invalid dtype.
SAE_RT_API size_t sae_rt_dtype_size(sae_rt_dtype dtype);
/// "float32", "int32", "float16", "bfloat16"; "invalid" otherwise.
SAE_RT_API const char *sae_rt_dtype_name(sae_rt_dtype dtype);

/// Allocates a zero-filled array. `shape` may be NULL when ndim == 0.
SAE_RT_API sae_rt_status sae_rt_array_alloc(sae_rt_dtype dtype, int32_t ndim,
                                            const int64_t *shape,
                                            sae_rt_array *out);
/// Frees `array->data` and resets the struct to an empty 0-d float32 array.
/// Accepts NULL and already-freed arrays.
SAE_RT_API void sae_rt_array_free(sae_rt_array *array);
/// Number of elements (product of the shape; 1 for ndim == 0), or -1 if the
/// array description is invalid or the product overflows.
SAE_RT_API int64_t sae_rt_array_numel(const sae_rt_array *array);
/// Size of the data in bytes, or 0 if invalid.
SAE_RT_API size_t sae_rt_array_nbytes(const sae_rt_array *array);
/// Converts `in` (any dtype) to a new float32 array in `out`. float16 and
/// bfloat16 are widened exactly; int32 is converted by value.
SAE_RT_API sae_rt_status sae_rt_array_to_float32(const sae_rt_array *in,
                                                 sae_rt_array *out);

/// IEEE binary16 bits -> float (exact, incl. subnormals, inf and NaN).
SAE_RT_API float sae_rt_float16_to_float32(uint16_t bits);
/// bfloat16 bits -> float (exact).
SAE_RT_API float sae_rt_bfloat16_to_float32(uint16_t bits);

/*===--------------------------- .npy -----------------------------------===*/

/// Reads a whole .npy file (format 1.0, 2.0 or 3.0; dtypes '<f4', '<i4',
/// '<f2'; C order). Bytes after the data are ignored.
SAE_RT_API sae_rt_status sae_rt_npy_read(const char *path, sae_rt_array *out);

/// Reads an IDX file (the MNIST / Fashion-MNIST format), plain or
/// gzip-compressed, as a float32 array [N, prod(other dims)] (or [N] for a
/// rank-1 file). Unsigned-byte data (pixels) is scaled to [0, 1]; other
/// element types are converted as they are.
SAE_RT_API sae_rt_status sae_rt_idx_read(const char *path, sae_rt_array *out);

/// Writes `array` (float32, int32 or float16) as a .npy file, atomically
/// (temporary file in the same directory, then rename).
SAE_RT_API sae_rt_status sae_rt_npy_write(const char *path,
                                          const sae_rt_array *array);

/// Streaming access to a large .npy file, row by row (a "row" is one index
/// of the first dimension; a 0-d or 1-d array has one row for ndim 0 and
/// shape[0] rows for ndim 1).
typedef struct sae_rt_npy_reader sae_rt_npy_reader;

/// Opens and validates `path` (header and size); reads no data.
SAE_RT_API sae_rt_status sae_rt_npy_reader_open(const char *path,
                                                sae_rt_npy_reader **out);
SAE_RT_API sae_rt_dtype sae_rt_npy_reader_dtype(const sae_rt_npy_reader *r);
SAE_RT_API int32_t sae_rt_npy_reader_ndim(const sae_rt_npy_reader *r);
/// The shape (SAE_RT_MAX_NDIM entries, the first ndim are meaningful).
SAE_RT_API const int64_t *sae_rt_npy_reader_shape(const sae_rt_npy_reader *r);
/// Reads rows [first, first + count) of the array into `dst` (count * row
/// size bytes). For ndim 0 the only row is the scalar.
SAE_RT_API sae_rt_status sae_rt_npy_reader_read_rows(sae_rt_npy_reader *r,
                                                     int64_t first,
                                                     int64_t count, void *dst);
SAE_RT_API void sae_rt_npy_reader_close(sae_rt_npy_reader *r);

/// Streaming writer: declares the dtype and full shape up front, then takes
/// the data in order, in as many pieces as convenient. Nothing is visible at
/// `path` until sae_rt_npy_writer_commit() succeeds.
typedef struct sae_rt_npy_writer sae_rt_npy_writer;

SAE_RT_API sae_rt_status sae_rt_npy_writer_open(const char *path,
                                                sae_rt_dtype dtype,
                                                int32_t ndim,
                                                const int64_t *shape,
                                                sae_rt_npy_writer **out);
/// Appends `nbytes` bytes of row-major data.
SAE_RT_API sae_rt_status sae_rt_npy_writer_append(sae_rt_npy_writer *w,
                                                  const void *data,
                                                  size_t nbytes);
/// Checks that exactly the declared amount of data was appended, then makes
/// the file appear at its path. The writer must still be closed.
SAE_RT_API sae_rt_status sae_rt_npy_writer_commit(sae_rt_npy_writer *w);
/// Frees the writer; an uncommitted file is discarded.
SAE_RT_API void sae_rt_npy_writer_close(sae_rt_npy_writer *w);

/*===--------------------------- .npz -----------------------------------===*/

/// Writes an uncompressed ("stored") ZIP of .npy members, as numpy.savez
/// does; member i is named names[i] + ".npy". Written atomically.
SAE_RT_API sae_rt_status sae_rt_npz_write(const char *path, size_t count,
                                          const char *const *names,
                                          const sae_rt_array *arrays);

/// An .npz archive read into memory (stored members only).
typedef struct sae_rt_npz sae_rt_npz;

SAE_RT_API sae_rt_status sae_rt_npz_open(const char *path, sae_rt_npz **out);
/// Number of .npy members (other members are ignored).
SAE_RT_API size_t sae_rt_npz_count(const sae_rt_npz *npz);
/// Name of member `index` without the ".npy" suffix; NULL if out of range.
SAE_RT_API const char *sae_rt_npz_name(const sae_rt_npz *npz, size_t index);
/// The array of member `index`, owned by the archive; NULL if out of range.
SAE_RT_API const sae_rt_array *sae_rt_npz_array(const sae_rt_npz *npz,
                                                size_t index);
/// The array named `name` (without ".npy"), or NULL.
SAE_RT_API const sae_rt_array *sae_rt_npz_find(const sae_rt_npz *npz,
                                               const char *name);
SAE_RT_API void sae_rt_npz_close(sae_rt_npz *npz);

/*===------------------------ .safetensors ------------------------------===*/

/// Writes tensors (any sae_rt_dtype) with optional string metadata
/// (`metadata_count` key/value pairs, may be 0 with NULL arrays). The JSON
/// header is padded with spaces to a multiple of 8 bytes. Written atomically.
SAE_RT_API sae_rt_status sae_rt_safetensors_write(
    const char *path, size_t count, const char *const *names,
    const sae_rt_array *arrays, size_t metadata_count,
    const char *const *metadata_keys, const char *const *metadata_values);

/// A validated safetensors file; tensor data is read on demand.
typedef struct sae_rt_safetensors sae_rt_safetensors;

/// Opens `path` and validates its header: length within the file, valid
/// JSON, known dtypes, offsets in range, non-overlapping and matching
/// shape x dtype size.
SAE_RT_API sae_rt_status sae_rt_safetensors_open(const char *path,
                                                 sae_rt_safetensors **out);
SAE_RT_API size_t sae_rt_safetensors_count(const sae_rt_safetensors *st);
/// Name of tensor `index` (in file order of the data); NULL if out of range.
SAE_RT_API const char *sae_rt_safetensors_name(const sae_rt_safetensors *st,
                                               size_t index);
/// Index of the tensor named `name`, or -1.
SAE_RT_API int64_t sae_rt_safetensors_find(const sae_rt_safetensors *st,
                                           const char *name);
/// The dtype as spelled in the file ("F32", "BF16", "I64", ...).
SAE_RT_API const char *
sae_rt_safetensors_dtype_name(const sae_rt_safetensors *st, size_t index);
/// Shape of tensor `index`; *ndim receives its rank. NULL if out of range.
SAE_RT_API const int64_t *sae_rt_safetensors_shape(const sae_rt_safetensors *st,
                                                   size_t index, int32_t *ndim);
/// Reads tensor `name` into a new array in its stored dtype (F32, I32, F16
/// or BF16; other dtypes -> SAE_RT_ERR_FORMAT).
SAE_RT_API sae_rt_status sae_rt_safetensors_read(sae_rt_safetensors *st,
                                                 const char *name,
                                                 sae_rt_array *out);
/// The __metadata__ value of `key`, or NULL.
SAE_RT_API const char *sae_rt_safetensors_metadata(const sae_rt_safetensors *st,
                                                   const char *key);
SAE_RT_API void sae_rt_safetensors_close(sae_rt_safetensors *st);

/*===------------------------- Row sources ------------------------------===*/

/// Read-only access to the rows of a [B, d] array for bounded-memory
/// processing: a .npy file ('<f4' or '<f2'; shape [B, d], or [d] as one
/// row) or a named 2-D tensor of a safetensors file (F32, F16 or BF16).
/// The file is memory-mapped (read-only, never read whole), so it may be
/// larger than memory; each read widens the rows it returns to float32
/// exactly. Values are not checked (NaN and infinities pass through).
typedef struct sae_rt_rows sae_rt_rows;

/// Opens `path`. With `tensor` NULL the file must be a .npy file; a
/// safetensors file is refused with a message listing its tensors. With
/// `tensor` non-NULL it must be a safetensors file (a .npy file is
/// SAE_RT_ERR_ARG) holding a tensor of that name (a missing name is an
/// SAE_RT_ERR_ARG whose message lists the tensors of the file); a dtype
/// other than F32/F16/BF16 or a rank other than 2 is SAE_RT_ERR_SHAPE. A
/// .npy of another dtype or of rank other than 1 or 2 is SAE_RT_ERR_SHAPE
/// too. Malformed files are SAE_RT_ERR_FORMAT, as for the other readers.
SAE_RT_API sae_rt_status sae_rt_rows_open(const char *path,
                                          const char *tensor,
                                          sae_rt_rows **out);
/// B (1 for a [d] .npy) and d.
SAE_RT_API int64_t sae_rt_rows_count(const sae_rt_rows *rows);
SAE_RT_API int64_t sae_rt_rows_width(const sae_rt_rows *rows);
/// The dtype stored in the file (float32, float16 or bfloat16).
SAE_RT_API sae_rt_dtype sae_rt_rows_dtype(const sae_rt_rows *rows);
/// The stored shape: rank 1 ([d]) or 2 ([B, d]).
SAE_RT_API int32_t sae_rt_rows_ndim(const sae_rt_rows *rows);
SAE_RT_API const int64_t *sae_rt_rows_shape(const sae_rt_rows *rows);
/// Copies rows [first, first + count) into `dst` (count * d floats),
/// converted to float32. The file must still hold them (a file truncated
/// since it was opened is SAE_RT_ERR_IO, not a fault).
SAE_RT_API sae_rt_status sae_rt_rows_read(sae_rt_rows *rows, int64_t first,
                                          int64_t count, float *dst);
/// Unmaps the file. Accepts NULL.
SAE_RT_API void sae_rt_rows_close(sae_rt_rows *rows);

/*===-------------------------- Models ----------------------------------===*/

typedef struct sae_rt_model sae_rt_model;

typedef enum {
  SAE_RT_CODES_DENSE = 0,
  SAE_RT_CODES_SPARSE = 1
} sae_rt_codes_kind;

/// How a sparse model lays out its codes (see abi.h): "rows" (exactly k
/// entries per row, values/indices [B, k]) or "batch" (B*k entries per
/// batch, a variable number per row, with a row number per entry).
typedef enum {
  SAE_RT_LAYOUT_ROWS = 0,
  SAE_RT_LAYOUT_BATCH = 1,
  /* Not layouts: see sae_rt_status. */
  SAE_RT_LAYOUT_RANGE_MIN_ = -0x7fffffff - 1,
  SAE_RT_LAYOUT_RANGE_MAX_ = 0x7fffffff
} sae_rt_codes_layout;

/// The entry points of a model library; NULL where the library has none.
typedef struct sae_rt_entry_points {
  sae_abi_version_fn abi_version;
  sae_model_describe_fn describe;
  sae_init_fn init;
  sae_encode_dense_fn encode_dense;
  sae_encode_sparse_fn encode_sparse;
  sae_encode_batch_fn encode_batch;
  sae_decode_dense_fn decode_dense;
  sae_decode_sparse_fn decode_sparse;
  sae_decode_batch_fn decode_batch;
  sae_forward_fn forward;
  /* ABI 3: training. Resolved only when the description's "entry_points"
     lists them (then the library must export them); NULL otherwise. */
  sae_gradient_fn gradient;
  sae_train_step_fn train_step;
} sae_rt_entry_points;

/// Loads a saec-compiled library: dlopen(RTLD_NOW | RTLD_LOCAL), ABI version
/// check (exactly SAE_ABI_VERSION, 3), describe JSON validation, and a check
/// that the host CPU has every feature in target.required_features.
SAE_RT_API sae_rt_status sae_rt_model_open(const char *path,
                                           sae_rt_model **out);
/// Unloads the library. Pointers obtained from the model become invalid.
SAE_RT_API void sae_rt_model_close(sae_rt_model *model);

SAE_RT_API const char *sae_rt_model_name(const sae_rt_model *model);
/// The path the model was opened from.
SAE_RT_API const char *sae_rt_model_path(const sae_rt_model *model);
/// The text returned by sae_model_describe().
SAE_RT_API const char *sae_rt_model_describe_json(const sae_rt_model *model);
/// The same document, pretty-printed with an indent of 2 and a final newline.
SAE_RT_API const char *sae_rt_model_describe_pretty(const sae_rt_model *model);
/// "source" of the describe JSON ("" when absent).
SAE_RT_API const char *sae_rt_model_source(const sae_rt_model *model);
/// The text written as a checkpoint's cfg.json.
SAE_RT_API const char *sae_rt_model_cfg_json(const sae_rt_model *model);
SAE_RT_API uint32_t sae_rt_model_abi_version(const sae_rt_model *model);
/// d: the width of a row of the first input x (the one reconstructed).
SAE_RT_API int64_t sae_rt_model_input_dim(const sae_rt_model *model);
/// The inputs of the model, in ABI order ("inputs" of the describe JSON, or
/// just "input" for a library without that list): at least 1. Input 0 is x;
/// the others are auxiliary (e.g. the downstream gradient of grad_topk).
SAE_RT_API size_t sae_rt_model_input_count(const sae_rt_model *model);
/// The name of input `index`; NULL when out of range.
SAE_RT_API const char *sae_rt_model_input_name(const sae_rt_model *model,
                                               size_t index);
/// The row width of input `index`; 0 when out of range.
SAE_RT_API int64_t sae_rt_model_input_dim_at(const sae_rt_model *model,
                                             size_t index);
/// n: the number of latents (width of a dense code row).
SAE_RT_API int64_t sae_rt_model_latents(const sae_rt_model *model);
SAE_RT_API sae_rt_codes_kind sae_rt_model_codes_kind(const sae_rt_model *model);
/// k of a sparse model; 0 for dense models. With layout "batch", k is the
/// average number of entries per row (a batch of B rows holds B*k).
SAE_RT_API int64_t sae_rt_model_codes_k(const sae_rt_model *model);
/// "codes.layout" of a sparse model ("rows" when absent); SAE_RT_LAYOUT_ROWS
/// for dense models.
SAE_RT_API sae_rt_codes_layout
sae_rt_model_codes_layout(const sae_rt_model *model);
/// "rows" or "batch"; "invalid" otherwise.
SAE_RT_API const char *sae_rt_codes_layout_name(sae_rt_codes_layout layout);
/// "encoder.op" and "loss" of the describe JSON ("" when absent).
SAE_RT_API const char *sae_rt_model_encoder_op(const sae_rt_model *model);
SAE_RT_API const char *sae_rt_model_loss(const sae_rt_model *model);
/// The named terms of the loss ("loss_terms"; none when absent), in the
/// order of losses[1..] of sae_forward. Name: NULL when out of range.
SAE_RT_API size_t sae_rt_model_loss_term_count(const sae_rt_model *model);
SAE_RT_API const char *sae_rt_model_loss_term_name(const sae_rt_model *model,
                                                   size_t index);
/// 1 when sae_init needs a sample of x (data-dependent initialisers such as
/// data_mean), 0 otherwise ("init_needs_data"; 0 when absent).
SAE_RT_API int32_t sae_rt_model_init_needs_data(const sae_rt_model *model);
/// 1 when sae_forward samples noise from its seed ("stochastic"; 0 when
/// absent).
SAE_RT_API int32_t sae_rt_model_stochastic(const sae_rt_model *model);
/// The hyperparameters of "encoder" (every key but "op"), in document
/// order: names, and values as compact JSON text ("32", "0.5", "\"x\"").
SAE_RT_API size_t sae_rt_model_encoder_attr_count(const sae_rt_model *model);
SAE_RT_API const char *sae_rt_model_encoder_attr_name(const sae_rt_model *model,
                                                      size_t index);
SAE_RT_API const char *
sae_rt_model_encoder_attr_value(const sae_rt_model *model, size_t index);
/// "target.triple" and "target.cpu" ("" when absent).
SAE_RT_API const char *sae_rt_model_target_triple(const sae_rt_model *model);
SAE_RT_API const char *sae_rt_model_target_cpu(const sae_rt_model *model);
SAE_RT_API size_t sae_rt_model_feature_count(const sae_rt_model *model);
SAE_RT_API const char *sae_rt_model_feature(const sae_rt_model *model,
                                            size_t index);

SAE_RT_API size_t sae_rt_model_param_count(const sae_rt_model *model);
/// Parameter accessors; NULL / 0 when `index` is out of range.
SAE_RT_API const char *sae_rt_model_param_name(const sae_rt_model *model,
                                               size_t index);
SAE_RT_API int32_t sae_rt_model_param_ndim(const sae_rt_model *model,
                                           size_t index);
SAE_RT_API const int64_t *sae_rt_model_param_shape(const sae_rt_model *model,
                                                   size_t index);
SAE_RT_API int64_t sae_rt_model_param_numel(const sae_rt_model *model,
                                            size_t index);
/// The "init" of the parameter ("" when absent).
SAE_RT_API const char *sae_rt_model_param_init(const sae_rt_model *model,
                                               size_t index);
/// 1 when the parameter is trained by Adam ("trainable"; true when absent),
/// 0 for state updated by its own rule (and when `index` is out of range).
SAE_RT_API int32_t sae_rt_model_param_trainable(const sae_rt_model *model,
                                                size_t index);
/// The number of trainable parameters: the buffers of sae_gradient's
/// `grads` and of sae_train_step's `adam_m` / `adam_v`, in "params" order.
SAE_RT_API size_t sae_rt_model_trainable_count(const sae_rt_model *model);

/*===---------------------- Training configuration ----------------------===*/

/// "train.lr_decay": the learning rate after warm-up.
typedef enum {
  SAE_RT_LR_DECAY_NONE = 0,   /* constant */
  SAE_RT_LR_DECAY_LINEAR = 1, /* lr * (1 - p) */
  SAE_RT_LR_DECAY_COSINE = 2, /* lr * 0.5 * (1 + cos(pi * p)) */
  /* Not values: see sae_rt_status. */
  SAE_RT_LR_DECAY_RANGE_MIN_ = -0x7fffffff - 1,
  SAE_RT_LR_DECAY_RANGE_MAX_ = 0x7fffffff
} sae_rt_lr_decay;

/// "train.normalize": how the trainer scales the inputs.
typedef enum {
  SAE_RT_NORMALIZE_NONE = 0,
  /* x * c with c = sqrt(d) / mean ||x|| (SAELens' expected_average_only_in),
     folded into W_enc, W_dec and b_dec when saving. */
  SAE_RT_NORMALIZE_EXPECTED_NORM = 1,
  SAE_RT_NORMALIZE_RANGE_MIN_ = -0x7fffffff - 1,
  SAE_RT_NORMALIZE_RANGE_MAX_ = 0x7fffffff
} sae_rt_normalize;

/// The "train" object of a description (the spec's train section), or the
/// trainer's effective hyperparameters.
typedef struct sae_rt_train_config {
  double lr;                  /* Adam learning rate (2e-4) */
  double beta1;               /* Adam beta1, in [0, 1) (0.9) */
  double beta2;               /* Adam beta2, in [0, 1) (0.999) */
  double eps;                 /* Adam epsilon, >= 0 (1e-8) */
  double clip;                /* max global gradient norm; 0: none (0) */
  int64_t lr_warmup;          /* linear warm-up steps; 0: none (0) */
  sae_rt_lr_decay lr_decay;   /* after warm-up (none) */
  int64_t sparsity_warmup;    /* steps to ramp the sparsity factor (0) */
  int64_t batch;              /* rows per step (4096) */
  sae_rt_normalize normalize; /* (none) */
} sae_rt_train_config;

/// Fills `config` with the defaults above (those of a library whose
/// description has no "train" object).
SAE_RT_API void sae_rt_train_config_default(sae_rt_train_config *config);
/// Checks the ranges above; SAE_RT_ERR_ARG names the first bad field.
SAE_RT_API sae_rt_status
sae_rt_train_config_validate(const sae_rt_train_config *config);
/// The model's "train" object, every absent field at its default (the
/// defaults alone when there is no "train" object). NULL for a NULL model.
SAE_RT_API const sae_rt_train_config *
sae_rt_model_train_config(const sae_rt_model *model);
/// 1 when the description has a "train" object.
SAE_RT_API int32_t sae_rt_model_has_train_config(const sae_rt_model *model);
/// "train.unit_norm": the parameter whose rows the decoder unit-norm rule
/// keeps at norm 1, or NULL (null or absent).
SAE_RT_API const char *sae_rt_model_train_unit_norm(const sae_rt_model *model);
/// "none", "linear", "cosine" / "none", "expected_norm"; "invalid" else.
SAE_RT_API const char *sae_rt_lr_decay_name(sae_rt_lr_decay decay);
SAE_RT_API const char *sae_rt_normalize_name(sae_rt_normalize normalize);

SAE_RT_API const sae_rt_entry_points *
sae_rt_model_entry_points(const sae_rt_model *model);

/// Threads. A library's dense products run in parallel through the OpenMP
/// runtime it links (LLVM's libomp), on all cores unless OMP_NUM_THREADS
/// or this call says otherwise. Every output element is computed by one
/// thread in a fixed order, so results do not depend on the thread count.
/// sae_rt_model_set_threads sets the number of threads for the entry
/// points called afterwards from the calling thread (omp_set_num_threads
/// of the library's OpenMP runtime); threads < 1 -> SAE_RT_ERR_ARG. A
/// library without parallel code accepts any count and runs on one.
SAE_RT_API sae_rt_status sae_rt_model_set_threads(sae_rt_model *model,
                                                  int32_t threads);
/// The number of threads the next entry point call may use from the
/// calling thread (omp_get_max_threads; 1 without OpenMP).
SAE_RT_API int32_t sae_rt_model_threads(const sae_rt_model *model);

/// Checked wrappers around the entry points: validate the arguments (a
/// missing entry point -> SAE_RT_ERR_ABI; batch < 1, NULL buffers, a NULL
/// input or parameter pointer, sparse indices outside [0, n), batch-layout
/// rows outside [0, B) or out of order, or a call that does not fit the
/// model's codes layout -> SAE_RT_ERR_ARG), call the library and turn a
/// nonzero return into SAE_RT_ERR_EXEC.
///
/// `inputs` holds sae_rt_model_input_count() pointers, input i being
/// [batch, sae_rt_model_input_dim_at(i)].

/// Fills the parameters from their initialisers. `x` [batch, d] is a sample
/// of the first input; it is required (batch >= 1, x non-NULL) when
/// sae_rt_model_init_needs_data(); otherwise batch may be 0 and x NULL.
SAE_RT_API sae_rt_status sae_rt_model_init(const sae_rt_model *model,
                                           uint64_t seed, int64_t batch,
                                           const float *x,
                                           float *const *params);
/// inputs -> codes[batch, n].
SAE_RT_API sae_rt_status sae_rt_model_encode_dense(const sae_rt_model *model,
                                                   int64_t batch,
                                                   const float *const *inputs,
                                                   float *const *params,
                                                   float *codes);
/// inputs -> values[batch, k], indices[batch, k] (layout "rows").
SAE_RT_API sae_rt_status sae_rt_model_encode_sparse(
    const sae_rt_model *model, int64_t batch, const float *const *inputs,
    float *const *params, float *values, int32_t *indices);
/// inputs -> values[batch*k], indices[batch*k], rows[batch*k] (layout
/// "batch"). What the library returns is checked too (indices in [0, n),
/// rows in [0, batch) and sorted): a violation is SAE_RT_ERR_ABI.
SAE_RT_API sae_rt_status sae_rt_model_encode_batch(
    const sae_rt_model *model, int64_t batch, const float *const *inputs,
    float *const *params, float *values, int32_t *indices, int32_t *rows);
/// codes[batch, n] -> xhat[batch, d].
SAE_RT_API sae_rt_status sae_rt_model_decode_dense(const sae_rt_model *model,
                                                   int64_t batch,
                                                   const float *codes,
                                                   float *const *params,
                                                   float *xhat);
/// values[batch, k], indices[batch, k] -> xhat[batch, d] (layout "rows").
SAE_RT_API sae_rt_status sae_rt_model_decode_sparse(
    const sae_rt_model *model, int64_t batch, const float *values,
    const int32_t *indices, float *const *params, float *xhat);
/// values[batch*k], indices[batch*k], rows[batch*k] -> xhat[batch, d]
/// (layout "batch"). Indices must lie in [0, n), rows in [0, batch), and
/// rows must be non-decreasing.
SAE_RT_API sae_rt_status sae_rt_model_decode_batch(
    const sae_rt_model *model, int64_t batch, const float *values,
    const int32_t *indices, const int32_t *rows, float *const *params,
    float *xhat);
/// inputs -> xhat[batch, d] and losses[1 + sae_rt_model_loss_term_count()]:
/// the total loss, then each named term. `seed` drives the sampling of
/// stochastic models (ignored by the others).
SAE_RT_API sae_rt_status sae_rt_model_forward(
    const sae_rt_model *model, int64_t batch, const float *const *inputs,
    float *const *params, uint64_t seed, float *xhat, float *losses);

/// The gradient of the total loss (the training form, as sae_forward) with
/// respect to the trainable parameters: grads holds
/// sae_rt_model_trainable_count() buffers, one [shape] per trainable
/// parameter in "params" order (see sae_rt_trainable_alloc);
/// losses[1 + sae_rt_model_loss_term_count()] as for sae_rt_model_forward.
/// Nothing is updated.
SAE_RT_API sae_rt_status sae_rt_model_gradient(
    const sae_rt_model *model, int64_t batch, const float *const *inputs,
    float *const *params, uint64_t seed, float *const *grads, float *losses);
/// One fused training step (abi.h, sae_train_step_fn): updates `params`
/// (all of them) and the Adam moments `adam_m` / `adam_v` (one buffer per
/// trainable parameter, zeros before the first step) in place. `hyper`
/// holds SAE_HYPER_COUNT values (see sae_rt_train_hyper); they are checked
/// (finite; lr, eps, clip and the sparsity factor >= 0; beta1 and beta2 in
/// [0, 1); the bias corrections in (0, 1]). Fills
/// losses[1 + loss_term_count] (before the update, the terms unweighted),
/// metrics[SAE_METRIC_COUNT] and fired[n] (rows of the batch each latent
/// was active in).
SAE_RT_API sae_rt_status sae_rt_model_train_step(
    const sae_rt_model *model, int64_t batch, const float *const *inputs,
    float *const *params, float *const *adam_m, float *const *adam_v,
    const float *hyper, uint64_t seed, float *losses, float *metrics,
    float *fired);

/*===------------------------ Training helpers --------------------------===*/

/// The hyperparameters of training step `step` (1-based) of `total_steps`,
/// computed in double precision and rounded to float:
///   lr_t = lr * w * f, w = min(1, step / lr_warmup) (1 without warm-up),
///   f = 1 (none), 1 - p (linear) or 0.5 * (1 + cos(pi * p)) (cosine),
///   p = (step - lr_warmup) / (total_steps - lr_warmup) clamped to [0, 1]
///       (0 when total_steps <= lr_warmup);
///   sparsity = min(1, step / sparsity_warmup) (1 without warm-up);
///   bc1 = 1 - beta1^step, bc2 = 1 - beta2^step; beta1, beta2, eps and clip
///   as configured. `hyper` receives SAE_HYPER_COUNT floats. Needs
///   1 <= step <= total_steps and a valid config (SAE_RT_ERR_ARG).
SAE_RT_API sae_rt_status sae_rt_train_hyper(const sae_rt_train_config *config,
                                            int64_t step, int64_t total_steps,
                                            float *hyper);
/// The seed passed to sae_train_step at step `step` of a run seeded with
/// `seed`: mix64(seed ^ mix64(step)), where mix64(z) is splitmix64's output
/// function applied to z + 0x9e3779b97f4a7c15. A resumed run gets the same
/// seeds.
SAE_RT_API uint64_t sae_rt_train_step_seed(uint64_t seed, uint64_t step);
/// The order in which epoch `epoch` (from 0) visits `count` rows: a
/// Fisher-Yates shuffle of 0..count-1 (for i = count-1 down to 1, swap
/// perm[i] with perm[j], j uniform in [0, i] by rejection of the biased
/// draws below 2^64 mod (i + 1)) driven by splitmix64 from the state
/// mix64(seed ^ mix64(2^63 + epoch)). `perm` receives `count` indices.
SAE_RT_API sae_rt_status sae_rt_train_permutation(uint64_t seed, uint64_t epoch,
                                                  int64_t count, int64_t *perm);

/*===------------------------ Parameters --------------------------------===*/

/// Allocates one zero-filled, 64-byte aligned float buffer per parameter of
/// `model`, in describe order, and the array of pointers to them.
SAE_RT_API sae_rt_status sae_rt_params_alloc(const sae_rt_model *model,
                                             float ***out);
/// Like sae_rt_params_alloc(), for the trainable parameters only (in
/// "params" order): buffers for gradients and Adam moments. Free them with
/// sae_rt_params_free().
SAE_RT_API sae_rt_status sae_rt_trainable_alloc(const sae_rt_model *model,
                                                float ***out);
/// Frees what sae_rt_params_alloc() or sae_rt_trainable_alloc() returned
/// (NULL is accepted). Does not need the model, which may already be closed.
SAE_RT_API void sae_rt_params_free(float **params);

/*===------------------------ Checkpoints -------------------------------===*/

/// Writes `dir`/sae_weights.safetensors (one F32 tensor per parameter, named
/// after it) and `dir`/cfg.json, atomically: everything is written and
/// fsync'ed in a sibling `dir`.tmp-XXXXXX, which then replaces `dir`. An
/// existing `dir` must be empty or look like a checkpoint (contain
/// cfg.json or sae_weights.safetensors); it is replaced whole.
SAE_RT_API sae_rt_status sae_rt_checkpoint_save(const sae_rt_model *model,
                                                const char *dir,
                                                float *const *params);
/// A file that sae_rt_checkpoint_save_files() writes into the checkpoint
/// next to the weights: a text file (`text` non-NULL, written as is) or a
/// safetensors file of `tensor_count` tensors (`text` NULL; float32, int32,
/// float16 or bfloat16 arrays named by `tensor_names`).
typedef struct sae_rt_checkpoint_file {
  const char *name; /* a plain file name: no '/', not "." or "..", neither
                       sae_weights.safetensors nor cfg.json, no duplicates */
  const char *text;
  size_t tensor_count;
  const char *const *tensor_names;
  const sae_rt_array *tensors;
} sae_rt_checkpoint_file;

/// sae_rt_checkpoint_save() plus `file_count` more files (e.g. a trainer's
/// optimizer state), all in the one atomic swap: `dir` holds either the
/// old checkpoint or the whole new one, even if the process is killed
/// while writing (with renameat2(RENAME_EXCHANGE); on filesystems without
/// it, a kill between moving the old checkpoint aside and the new one in
/// leaves the old one at `dir`.old-XXXXXX).
SAE_RT_API sae_rt_status sae_rt_checkpoint_save_files(
    const sae_rt_model *model, const char *dir, float *const *params,
    size_t file_count, const sae_rt_checkpoint_file *files);
/// Reads `dir`/sae_weights.safetensors into `params`: every parameter must
/// be present with exactly the model's shape (F32; F16 and BF16 are
/// widened). Extra tensors are ignored.
SAE_RT_API sae_rt_status sae_rt_checkpoint_load(const sae_rt_model *model,
                                                const char *dir,
                                                float *const *params);

/*===------------------------ Evaluation --------------------------------===*/

/// Maximum-weight one-to-one matching between the rows and the columns of
/// `weights` [rows, cols] (row-major, finite values): min(rows, cols)
/// pairs, no row or column used twice, of the largest total weight. Solved
/// with the Hungarian algorithm in O(min^2 * max) time and O(rows + cols)
/// extra memory. `row_match[i]` (rows entries) receives the column matched
/// to row i, or -1 when rows > cols leaves it out; `total` (may be NULL)
/// the sum of the matched weights. rows or cols may be 0 (no pairs).
SAE_RT_API sae_rt_status sae_rt_match_max_weight(int64_t rows, int64_t cols,
                                                 const double *weights,
                                                 int64_t *row_match,
                                                 double *total);

/// How well the rows of a learned dictionary `learned` [latents, d] (e.g.
/// a decoder W_dec) recover a ground-truth dictionary `truth` [features, d]
/// (both float32, row-major). With C[f][i] = |cos(truth_f, learned_i)|
/// (0 when either row is zero), computed in double:
///   mean_max_cos = mean over f of max over i of C[f][i];
///   mcc          = mean of C over the min(features, latents) pairs of a
///                  maximum-weight one-to-one matching
///                  (sae_rt_match_max_weight on C).
/// Needs features * latents doubles of memory. Either output may be NULL.
SAE_RT_API sae_rt_status sae_rt_feature_recovery(int64_t features,
                                                 int64_t latents, int64_t d,
                                                 const float *truth,
                                                 const float *learned,
                                                 double *mean_max_cos,
                                                 double *mcc);

#ifdef __cplusplus
}
#endif

#endif /* SAE_RUNTIME_RUNTIME_H */
