// bench/sparse_aux_model.c: a C model of AuxK's decode as a sparse product,
// to compare with the dense product over the dead latents that saec emits.
// B = 1024 rows, each with k_aux = 512 entries (distinct, in latent order)
// among ND = 1664 dead rows of a [ND, 768] decoder (10% of n = 16384 dead,
// rounded up to whole panels). out[b] = sum_t v[b, t] * W[idx[b, t]], summed
// in 12 AVX-512 registers per chunk of 192 columns; chunk-outer order keeps
// a chunk of W's columns (1.3 MB) in L2 across rows, row-outer does not.
// Prints the time and the GFLOP/s a dense [B, ND] x [ND, 768] product would
// need to match it.
//
//   gcc -O3 -march=native -fopenmp bench/sparse_aux_model.c -o /tmp/sparse_aux
//   OMP_NUM_THREADS=2 /tmp/sparse_aux
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
#define B 1024
#define ND 1664
#define D 768
#define KA 512
#define CH 192  // 12 vectors
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(){
  float *W=aligned_alloc(64,sizeof(float)*ND*D), *out=aligned_alloc(64,sizeof(float)*B*D);
  float *val=malloc(sizeof(float)*B*KA); int *idx=malloc(sizeof(int)*B*KA);
  for(long i=0;i<(long)ND*D;i++) W[i]=(float)rand()/RAND_MAX;
  for(int b=0;b<B;b++){ // KA distinct of ND, sorted (as a selection gives them in latent order)
    char *used=calloc(ND,1); int c=0;
    while(c<KA){int j=rand()%ND; if(!used[j]){used[j]=1;c++;}}
    c=0; for(int j=0;j<ND;j++) if(used[j]){idx[b*KA+c]=j; val[b*KA+c]=(float)rand()/RAND_MAX; c++;}
    free(used);
  }
  for(int rep=0;rep<8;rep++){
    double t0=now();
    #pragma omp parallel
    {
      for(int c0=0;c0<D;c0+=CH){
        #pragma omp for schedule(static)
        for(int b=0;b<B;b++){
          __m512 acc[12]; for(int u=0;u<12;u++) acc[u]=_mm512_setzero_ps();
          const float *v=val+b*KA; const int *ix=idx+b*KA;
          for(int t=0;t<KA;t++){
            __m512 s=_mm512_set1_ps(v[t]); const float *w=W+(long)ix[t]*D+c0;
            for(int u=0;u<12;u++) acc[u]=_mm512_fmadd_ps(s,_mm512_loadu_ps(w+16*u),acc[u]);
          }
          for(int u=0;u<12;u++) _mm512_storeu_ps(out+(long)b*D+c0+16*u,acc[u]);
        }
      }
    }
    double t=now()-t0;
    printf("sparse chunk-outer: %.2f ms, %.0f GFLOP/s useful (dense equivalent at ND: %.0f GFLOP/s)\n", t*1e3, 2.0*B*KA*D/t/1e9, 2.0*B*ND*D/t/1e9);
  }
  // row-outer order, for comparison
  for(int rep=0;rep<4;rep++){
    double t0=now();
    #pragma omp parallel for schedule(static)
    for(int b=0;b<B;b++) for(int c0=0;c0<D;c0+=CH){
      __m512 acc[12]; for(int u=0;u<12;u++) acc[u]=_mm512_setzero_ps();
      const float *v=val+b*KA; const int *ix=idx+b*KA;
      for(int t=0;t<KA;t++){
        __m512 s=_mm512_set1_ps(v[t]); const float *w=W+(long)ix[t]*D+c0;
        for(int u=0;u<12;u++) acc[u]=_mm512_fmadd_ps(s,_mm512_loadu_ps(w+16*u),acc[u]);
      }
      for(int u=0;u<12;u++) _mm512_storeu_ps(out+(long)b*D+c0+16*u,acc[u]);
    }
    double t=now()-t0;
    printf("sparse row-outer:   %.2f ms, %.0f GFLOP/s useful\n", t*1e3, 2.0*B*KA*D/t/1e9);
  }
  return 0;
}
