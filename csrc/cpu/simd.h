// Thin SIMD vectors for one instruction set: Vec<float> / Vec<double> with the few operations
// the kernels need. Included only by the per-ISA kernel files (kernels_<isa>.cpp), each of which
// defines ELMAN_ISA_NS (the namespace everything here lives in, so that no symbol compiled for
// one instruction set can be linked into another) and one of ELMAN_ISA_{BASELINE,AVX2,AVX512}.
#pragma once

#if !defined(ELMAN_ISA_NS)
#error "simd.h is included only by the per-ISA kernel files"
#endif

#include <immintrin.h>

#include <cstdint>

namespace elman {
namespace cpu {
namespace ELMAN_ISA_NS {

#define ELMAN_VINLINE inline __attribute__((always_inline))

template <typename T>
struct Vec;

#if defined(ELMAN_ISA_AVX512)
// ------------------------------------------------------------------------------------ AVX-512
template <>
struct Vec<float> {
  static constexpr int W = 16;
  using Mask = __mmask16;
  __m512 v;
  static ELMAN_VINLINE Mask first(int n) { return Mask((1u << n) - 1u); }
  static ELMAN_VINLINE Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static ELMAN_VINLINE Vec load_first(const float* p, int n) { return {_mm512_maskz_loadu_ps(first(n), p)}; }
  ELMAN_VINLINE void store(float* p) const { _mm512_storeu_ps(p, v); }
  ELMAN_VINLINE void store_first(float* p, int n) const { _mm512_mask_storeu_ps(p, first(n), v); }
  static ELMAN_VINLINE Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static ELMAN_VINLINE Vec zero() { return {_mm512_setzero_ps()}; }
  ELMAN_VINLINE Vec keep_first(int n) const { return {_mm512_maskz_mov_ps(first(n), v)}; }
};
ELMAN_VINLINE Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm512_add_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm512_sub_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm512_mul_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator/(Vec<float> a, Vec<float> b) { return {_mm512_div_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<float> fnmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
// min(a, b) / max(a, b) return b when either is NaN (the x86 rule)
ELMAN_VINLINE Vec<float> vmin(Vec<float> a, Vec<float> b) { return {_mm512_min_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> vmax(Vec<float> a, Vec<float> b) { return {_mm512_max_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float>::Mask lt(Vec<float> a, Vec<float> b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
ELMAN_VINLINE Vec<float>::Mask le(Vec<float> a, Vec<float> b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ); }
ELMAN_VINLINE Vec<float>::Mask isnan(Vec<float> a) { return _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q); }
// select(m, a, b) = m ? a : b
ELMAN_VINLINE Vec<float> select(Vec<float>::Mask m, Vec<float> a, Vec<float> b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
ELMAN_VINLINE Vec<float> signbit(Vec<float> a) { return {_mm512_and_ps(a.v, _mm512_set1_ps(-0.0f))}; }
ELMAN_VINLINE Vec<float> vabs(Vec<float> a) { return {_mm512_andnot_ps(_mm512_set1_ps(-0.0f), a.v)}; }
ELMAN_VINLINE Vec<float> vor(Vec<float> a, Vec<float> b) { return {_mm512_or_ps(a.v, b.v)}; }
ELMAN_VINLINE float hsum(Vec<float> a) { return _mm512_reduce_add_ps(a.v); }
// 2^n for the integer n held in the low mantissa bits of t = n + 1.5 * 2^23
ELMAN_VINLINE Vec<float> pow2_from_magic(Vec<float> t) {
  __m512i i = _mm512_slli_epi32(_mm512_castps_si512(t.v), 23);
  return {_mm512_castsi512_ps(_mm512_add_epi32(i, _mm512_set1_epi32(127 << 23)))};
}
// Adds the squares of the first n lanes of a, in double, into acc.
// p[0:n] += x[0:n], in double.
ELMAN_VINLINE void add_to_doubles(double* p, Vec<float> x, int n) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x.v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.v), 1)));
  const __mmask8 mlo = __mmask8((1u << (n < 8 ? n : 8)) - 1u), mhi = __mmask8((1u << (n > 8 ? n - 8 : 0)) - 1u);
  _mm512_mask_storeu_pd(p, mlo, _mm512_add_pd(_mm512_maskz_loadu_pd(mlo, p), lo));
  _mm512_mask_storeu_pd(p + 8, mhi, _mm512_add_pd(_mm512_maskz_loadu_pd(mhi, p + 8), hi));
}
ELMAN_VINLINE void add_squares(Vec<float> a, __m512d* acc) {
  __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a.v));
  __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
  acc[0] = _mm512_fmadd_pd(lo, lo, acc[0]);
  acc[1] = _mm512_fmadd_pd(hi, hi, acc[1]);
}

template <>
struct Vec<double> {
  static constexpr int W = 8;
  using Mask = __mmask8;
  __m512d v;
  static ELMAN_VINLINE Mask first(int n) { return Mask((1u << n) - 1u); }
  static ELMAN_VINLINE Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static ELMAN_VINLINE Vec load_first(const double* p, int n) { return {_mm512_maskz_loadu_pd(first(n), p)}; }
  ELMAN_VINLINE void store(double* p) const { _mm512_storeu_pd(p, v); }
  ELMAN_VINLINE void store_first(double* p, int n) const { _mm512_mask_storeu_pd(p, first(n), v); }
  static ELMAN_VINLINE Vec set1(double x) { return {_mm512_set1_pd(x)}; }
  static ELMAN_VINLINE Vec zero() { return {_mm512_setzero_pd()}; }
  ELMAN_VINLINE Vec keep_first(int n) const { return {_mm512_maskz_mov_pd(first(n), v)}; }
};
ELMAN_VINLINE Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm512_add_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm512_sub_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm512_mul_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator/(Vec<double> a, Vec<double> b) { return {_mm512_div_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<double> fnmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm512_fnmadd_pd(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<double> vmin(Vec<double> a, Vec<double> b) { return {_mm512_min_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> vmax(Vec<double> a, Vec<double> b) { return {_mm512_max_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double>::Mask lt(Vec<double> a, Vec<double> b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ); }
ELMAN_VINLINE Vec<double>::Mask le(Vec<double> a, Vec<double> b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LE_OQ); }
ELMAN_VINLINE Vec<double>::Mask isnan(Vec<double> a) { return _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q); }
ELMAN_VINLINE Vec<double> select(Vec<double>::Mask m, Vec<double> a, Vec<double> b) { return {_mm512_mask_blend_pd(m, b.v, a.v)}; }
ELMAN_VINLINE Vec<double> signbit(Vec<double> a) { return {_mm512_and_pd(a.v, _mm512_set1_pd(-0.0))}; }
ELMAN_VINLINE Vec<double> vabs(Vec<double> a) { return {_mm512_andnot_pd(_mm512_set1_pd(-0.0), a.v)}; }
ELMAN_VINLINE Vec<double> vor(Vec<double> a, Vec<double> b) { return {_mm512_or_pd(a.v, b.v)}; }
ELMAN_VINLINE double hsum(Vec<double> a) { return _mm512_reduce_add_pd(a.v); }
ELMAN_VINLINE Vec<double> pow2_from_magic(Vec<double> t) {
  __m512i i = _mm512_slli_epi64(_mm512_castpd_si512(t.v), 52);
  return {_mm512_castsi512_pd(_mm512_add_epi64(i, _mm512_set1_epi64(int64_t(1023) << 52)))};
}
ELMAN_VINLINE void add_squares(Vec<double> a, __m512d* acc) { acc[0] = _mm512_fmadd_pd(a.v, a.v, acc[0]); }
ELMAN_VINLINE void add_to_doubles(double* p, Vec<double> x, int n) {
  const __mmask8 m = Vec<double>::first(n);
  _mm512_mask_storeu_pd(p, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, p), x.v));
}
using DoubleAcc = __m512d;
ELMAN_VINLINE DoubleAcc dacc_zero() { return _mm512_setzero_pd(); }
ELMAN_VINLINE double dacc_sum(DoubleAcc a) { return _mm512_reduce_add_pd(a); }

#elif defined(ELMAN_ISA_AVX2)
// ------------------------------------------------------------------------------------ AVX2 + FMA
template <>
struct Vec<float> {
  static constexpr int W = 8;
  using Mask = __m256;
  __m256 v;
  static ELMAN_VINLINE __m256i first_bits(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static ELMAN_VINLINE Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static ELMAN_VINLINE Vec load_first(const float* p, int n) { return {_mm256_maskload_ps(p, first_bits(n))}; }
  ELMAN_VINLINE void store(float* p) const { _mm256_storeu_ps(p, v); }
  ELMAN_VINLINE void store_first(float* p, int n) const { _mm256_maskstore_ps(p, first_bits(n), v); }
  static ELMAN_VINLINE Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static ELMAN_VINLINE Vec zero() { return {_mm256_setzero_ps()}; }
  ELMAN_VINLINE Vec keep_first(int n) const { return {_mm256_and_ps(_mm256_castsi256_ps(first_bits(n)), v)}; }
};
ELMAN_VINLINE Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm256_add_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm256_sub_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm256_mul_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator/(Vec<float> a, Vec<float> b) { return {_mm256_div_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<float> fnmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<float> vmin(Vec<float> a, Vec<float> b) { return {_mm256_min_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> vmax(Vec<float> a, Vec<float> b) { return {_mm256_max_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float>::Mask lt(Vec<float> a, Vec<float> b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
ELMAN_VINLINE Vec<float>::Mask le(Vec<float> a, Vec<float> b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LE_OQ); }
ELMAN_VINLINE Vec<float>::Mask isnan(Vec<float> a) { return _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q); }
ELMAN_VINLINE Vec<float> select(Vec<float>::Mask m, Vec<float> a, Vec<float> b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
ELMAN_VINLINE Vec<float> signbit(Vec<float> a) { return {_mm256_and_ps(a.v, _mm256_set1_ps(-0.0f))}; }
ELMAN_VINLINE Vec<float> vabs(Vec<float> a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
ELMAN_VINLINE Vec<float> vor(Vec<float> a, Vec<float> b) { return {_mm256_or_ps(a.v, b.v)}; }
ELMAN_VINLINE float hsum(Vec<float> a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
ELMAN_VINLINE Vec<float> pow2_from_magic(Vec<float> t) {
  __m256i i = _mm256_slli_epi32(_mm256_castps_si256(t.v), 23);
  return {_mm256_castsi256_ps(_mm256_add_epi32(i, _mm256_set1_epi32(127 << 23)))};
}
ELMAN_VINLINE void add_to_doubles(double* p, Vec<float> x, int n) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x.v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1));
  const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i mlo = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lanes);
  const __m256i mhi = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - 4), lanes);
  _mm256_maskstore_pd(p, mlo, _mm256_add_pd(_mm256_maskload_pd(p, mlo), lo));
  _mm256_maskstore_pd(p + 4, mhi, _mm256_add_pd(_mm256_maskload_pd(p + 4, mhi), hi));
}
ELMAN_VINLINE void add_squares(Vec<float> a, __m256d* acc) {
  __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a.v));
  __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1));
  acc[0] = _mm256_fmadd_pd(lo, lo, acc[0]);
  acc[1] = _mm256_fmadd_pd(hi, hi, acc[1]);
}

template <>
struct Vec<double> {
  static constexpr int W = 4;
  using Mask = __m256d;
  __m256d v;
  static ELMAN_VINLINE __m256i first_bits(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static ELMAN_VINLINE Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static ELMAN_VINLINE Vec load_first(const double* p, int n) { return {_mm256_maskload_pd(p, first_bits(n))}; }
  ELMAN_VINLINE void store(double* p) const { _mm256_storeu_pd(p, v); }
  ELMAN_VINLINE void store_first(double* p, int n) const { _mm256_maskstore_pd(p, first_bits(n), v); }
  static ELMAN_VINLINE Vec set1(double x) { return {_mm256_set1_pd(x)}; }
  static ELMAN_VINLINE Vec zero() { return {_mm256_setzero_pd()}; }
  ELMAN_VINLINE Vec keep_first(int n) const { return {_mm256_and_pd(_mm256_castsi256_pd(first_bits(n)), v)}; }
};
ELMAN_VINLINE Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm256_add_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm256_sub_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm256_mul_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator/(Vec<double> a, Vec<double> b) { return {_mm256_div_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<double> fnmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm256_fnmadd_pd(a.v, b.v, c.v)}; }
ELMAN_VINLINE Vec<double> vmin(Vec<double> a, Vec<double> b) { return {_mm256_min_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> vmax(Vec<double> a, Vec<double> b) { return {_mm256_max_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double>::Mask lt(Vec<double> a, Vec<double> b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ); }
ELMAN_VINLINE Vec<double>::Mask le(Vec<double> a, Vec<double> b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LE_OQ); }
ELMAN_VINLINE Vec<double>::Mask isnan(Vec<double> a) { return _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q); }
ELMAN_VINLINE Vec<double> select(Vec<double>::Mask m, Vec<double> a, Vec<double> b) { return {_mm256_blendv_pd(b.v, a.v, m)}; }
ELMAN_VINLINE Vec<double> signbit(Vec<double> a) { return {_mm256_and_pd(a.v, _mm256_set1_pd(-0.0))}; }
ELMAN_VINLINE Vec<double> vabs(Vec<double> a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }
ELMAN_VINLINE Vec<double> vor(Vec<double> a, Vec<double> b) { return {_mm256_or_pd(a.v, b.v)}; }
ELMAN_VINLINE double hsum(Vec<double> a) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
ELMAN_VINLINE Vec<double> pow2_from_magic(Vec<double> t) {
  __m256i i = _mm256_slli_epi64(_mm256_castpd_si256(t.v), 52);
  return {_mm256_castsi256_pd(_mm256_add_epi64(i, _mm256_set1_epi64x(int64_t(1023) << 52)))};
}
ELMAN_VINLINE void add_squares(Vec<double> a, __m256d* acc) { acc[0] = _mm256_fmadd_pd(a.v, a.v, acc[0]); }
ELMAN_VINLINE void add_to_doubles(double* p, Vec<double> x, int n) {
  const __m256i m = Vec<double>::first_bits(n);
  _mm256_maskstore_pd(p, m, _mm256_add_pd(_mm256_maskload_pd(p, m), x.v));
}
using DoubleAcc = __m256d;
ELMAN_VINLINE DoubleAcc dacc_zero() { return _mm256_setzero_pd(); }
ELMAN_VINLINE double dacc_sum(DoubleAcc a) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

#elif defined(ELMAN_ISA_BASELINE)
// ------------------------------------------------------------------------------------ SSE2 (x86-64)
// No FMA instruction: fmadd is a multiply then an add (two roundings).
template <>
struct Vec<float> {
  static constexpr int W = 4;
  using Mask = __m128;
  __m128 v;
  static ELMAN_VINLINE Vec load(const float* p) { return {_mm_loadu_ps(p)}; }
  static ELMAN_VINLINE Vec load_first(const float* p, int n) {
    alignas(16) float t[4] = {0.f, 0.f, 0.f, 0.f};
    for (int i = 0; i < n; ++i) t[i] = p[i];
    return {_mm_load_ps(t)};
  }
  ELMAN_VINLINE void store(float* p) const { _mm_storeu_ps(p, v); }
  ELMAN_VINLINE void store_first(float* p, int n) const {
    alignas(16) float t[4];
    _mm_store_ps(t, v);
    for (int i = 0; i < n; ++i) p[i] = t[i];
  }
  static ELMAN_VINLINE Vec set1(float x) { return {_mm_set1_ps(x)}; }
  static ELMAN_VINLINE Vec zero() { return {_mm_setzero_ps()}; }
  ELMAN_VINLINE Vec keep_first(int n) const {
    const __m128i lanes = _mm_setr_epi32(0, 1, 2, 3);
    return {_mm_and_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(_mm_set1_epi32(n), lanes)), v)};
  }
};
ELMAN_VINLINE Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm_add_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm_sub_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm_mul_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> operator/(Vec<float> a, Vec<float> b) { return {_mm_div_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm_add_ps(_mm_mul_ps(a.v, b.v), c.v)}; }
ELMAN_VINLINE Vec<float> fnmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm_sub_ps(c.v, _mm_mul_ps(a.v, b.v))}; }
ELMAN_VINLINE Vec<float> vmin(Vec<float> a, Vec<float> b) { return {_mm_min_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float> vmax(Vec<float> a, Vec<float> b) { return {_mm_max_ps(a.v, b.v)}; }
ELMAN_VINLINE Vec<float>::Mask lt(Vec<float> a, Vec<float> b) { return _mm_cmplt_ps(a.v, b.v); }
ELMAN_VINLINE Vec<float>::Mask le(Vec<float> a, Vec<float> b) { return _mm_cmple_ps(a.v, b.v); }
ELMAN_VINLINE Vec<float>::Mask isnan(Vec<float> a) { return _mm_cmpunord_ps(a.v, a.v); }
ELMAN_VINLINE Vec<float> select(Vec<float>::Mask m, Vec<float> a, Vec<float> b) {
  return {_mm_or_ps(_mm_and_ps(m, a.v), _mm_andnot_ps(m, b.v))};
}
ELMAN_VINLINE Vec<float> signbit(Vec<float> a) { return {_mm_and_ps(a.v, _mm_set1_ps(-0.0f))}; }
ELMAN_VINLINE Vec<float> vabs(Vec<float> a) { return {_mm_andnot_ps(_mm_set1_ps(-0.0f), a.v)}; }
ELMAN_VINLINE Vec<float> vor(Vec<float> a, Vec<float> b) { return {_mm_or_ps(a.v, b.v)}; }
ELMAN_VINLINE float hsum(Vec<float> a) {
  __m128 s = _mm_add_ps(a.v, _mm_movehl_ps(a.v, a.v));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
ELMAN_VINLINE Vec<float> pow2_from_magic(Vec<float> t) {
  __m128i i = _mm_slli_epi32(_mm_castps_si128(t.v), 23);
  return {_mm_castsi128_ps(_mm_add_epi32(i, _mm_set1_epi32(127 << 23)))};
}
ELMAN_VINLINE void add_to_doubles(double* p, Vec<float> x, int n) {
  alignas(16) float t[4];
  _mm_store_ps(t, x.v);
  for (int i = 0; i < n; ++i) p[i] += double(t[i]);
}
ELMAN_VINLINE void add_squares(Vec<float> a, __m128d* acc) {
  __m128d lo = _mm_cvtps_pd(a.v);
  __m128d hi = _mm_cvtps_pd(_mm_movehl_ps(a.v, a.v));
  acc[0] = _mm_add_pd(acc[0], _mm_mul_pd(lo, lo));
  acc[1] = _mm_add_pd(acc[1], _mm_mul_pd(hi, hi));
}

template <>
struct Vec<double> {
  static constexpr int W = 2;
  using Mask = __m128d;
  __m128d v;
  static ELMAN_VINLINE Vec load(const double* p) { return {_mm_loadu_pd(p)}; }
  static ELMAN_VINLINE Vec load_first(const double* p, int n) {
    return {n >= 2 ? _mm_loadu_pd(p) : (n == 1 ? _mm_load_sd(p) : _mm_setzero_pd())};
  }
  ELMAN_VINLINE void store(double* p) const { _mm_storeu_pd(p, v); }
  ELMAN_VINLINE void store_first(double* p, int n) const {
    if (n >= 2) _mm_storeu_pd(p, v);
    else if (n == 1) _mm_store_sd(p, v);
  }
  static ELMAN_VINLINE Vec set1(double x) { return {_mm_set1_pd(x)}; }
  static ELMAN_VINLINE Vec zero() { return {_mm_setzero_pd()}; }
  ELMAN_VINLINE Vec keep_first(int n) const {
    return {n >= 2 ? v : (n == 1 ? _mm_move_sd(_mm_setzero_pd(), v) : _mm_setzero_pd())};
  }
};
ELMAN_VINLINE Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm_add_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm_sub_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm_mul_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> operator/(Vec<double> a, Vec<double> b) { return {_mm_div_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm_add_pd(_mm_mul_pd(a.v, b.v), c.v)}; }
ELMAN_VINLINE Vec<double> fnmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm_sub_pd(c.v, _mm_mul_pd(a.v, b.v))}; }
ELMAN_VINLINE Vec<double> vmin(Vec<double> a, Vec<double> b) { return {_mm_min_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double> vmax(Vec<double> a, Vec<double> b) { return {_mm_max_pd(a.v, b.v)}; }
ELMAN_VINLINE Vec<double>::Mask lt(Vec<double> a, Vec<double> b) { return _mm_cmplt_pd(a.v, b.v); }
ELMAN_VINLINE Vec<double>::Mask le(Vec<double> a, Vec<double> b) { return _mm_cmple_pd(a.v, b.v); }
ELMAN_VINLINE Vec<double>::Mask isnan(Vec<double> a) { return _mm_cmpunord_pd(a.v, a.v); }
ELMAN_VINLINE Vec<double> select(Vec<double>::Mask m, Vec<double> a, Vec<double> b) {
  return {_mm_or_pd(_mm_and_pd(m, a.v), _mm_andnot_pd(m, b.v))};
}
ELMAN_VINLINE Vec<double> signbit(Vec<double> a) { return {_mm_and_pd(a.v, _mm_set1_pd(-0.0))}; }
ELMAN_VINLINE Vec<double> vabs(Vec<double> a) { return {_mm_andnot_pd(_mm_set1_pd(-0.0), a.v)}; }
ELMAN_VINLINE Vec<double> vor(Vec<double> a, Vec<double> b) { return {_mm_or_pd(a.v, b.v)}; }
ELMAN_VINLINE double hsum(Vec<double> a) { return _mm_cvtsd_f64(_mm_add_sd(a.v, _mm_unpackhi_pd(a.v, a.v))); }
ELMAN_VINLINE Vec<double> pow2_from_magic(Vec<double> t) {
  __m128i i = _mm_slli_epi64(_mm_castpd_si128(t.v), 52);
  return {_mm_castsi128_pd(_mm_add_epi64(i, _mm_set1_epi64x(int64_t(1023) << 52)))};
}
ELMAN_VINLINE void add_squares(Vec<double> a, __m128d* acc) { acc[0] = _mm_add_pd(acc[0], _mm_mul_pd(a.v, a.v)); }
ELMAN_VINLINE void add_to_doubles(double* p, Vec<double> x, int n) {
  (Vec<double>::load_first(p, n) + x).store_first(p, n);
}
using DoubleAcc = __m128d;
ELMAN_VINLINE DoubleAcc dacc_zero() { return _mm_setzero_pd(); }
ELMAN_VINLINE double dacc_sum(DoubleAcc a) { return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a))); }
#else
#error "define one of ELMAN_ISA_BASELINE, ELMAN_ISA_AVX2, ELMAN_ISA_AVX512"
#endif

// With lt, le, select and fnmadd above, the vector forms of the primitives rnn_math.h's
// templates are written in (math::relu, math::tanh_dz, math::relu_dz on a Vec): a constant
// broadcast to every lane.
template <typename T, typename S>
ELMAN_VINLINE Vec<T> splat(Vec<T>, S c) { return Vec<T>::set1(T(c)); }

}  // namespace ELMAN_ISA_NS
}  // namespace cpu
}  // namespace elman
