// A GPU timeline for any CUDA program, without nsys: loaded by the CUDA driver through
// CUDA_INJECTION64_PATH, it records every kernel, memcpy and memset (device timestamps) and the
// driver API calls longer than 8 us (host timestamps, same clock) into TRACE_OUT as CSV:
//   kind (K kernel, C memcpy, S memset, D driver call), start ns, end ns, stream, grid or bytes
//   or callback id, block, shared bytes, name
// Built by build.sh; read by timeline.py.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *out;
enum { BUFFER_BYTES = 8 << 20 };

static void CUPTIAPI on_request(uint8_t **buffer, size_t *size, size_t *max_records) {
  *buffer = aligned_alloc(8, BUFFER_BYTES);
  *size = BUFFER_BYTES;
  *max_records = 0;
}

static void CUPTIAPI on_complete(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
  CUpti_Activity *r = NULL;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      KERNEL_RECORD *k = (KERNEL_RECORD *)r;
      fprintf(out, "K,%llu,%llu,%u,%d,%d,%d,%s\n", (unsigned long long)k->start, (unsigned long long)k->end,
              k->streamId, k->gridX * k->gridY * k->gridZ, k->blockX * k->blockY * k->blockZ,
              k->dynamicSharedMemory + k->staticSharedMemory, k->name);
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      MEMCPY_RECORD *c = (MEMCPY_RECORD *)r;
      fprintf(out, "C,%llu,%llu,%u,%llu,0,0,memcpy kind %d\n", (unsigned long long)c->start,
              (unsigned long long)c->end, c->streamId, (unsigned long long)c->bytes, (int)c->copyKind);
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      MEMSET_RECORD *s = (MEMSET_RECORD *)r;
      fprintf(out, "S,%llu,%llu,%u,%llu,0,0,memset\n", (unsigned long long)s->start, (unsigned long long)s->end,
              s->streamId, (unsigned long long)s->bytes);
    } else if (r->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
      CUpti_ActivityAPI *a = (CUpti_ActivityAPI *)r;
      if (a->end - a->start > 8000) {
        const char *name = "?";
        cuptiGetCallbackName(CUPTI_CB_DOMAIN_DRIVER_API, a->cbid, &name);
        fprintf(out, "D,%llu,%llu,0,%u,0,0,%s\n", (unsigned long long)a->start, (unsigned long long)a->end,
                a->cbid, name);
      }
    }
  }
  free(buffer);
}

static void finish(void) {
  cuptiActivityFlushAll(1);
  fclose(out);
}

int InitializeInjection(void) {
  const char *path = getenv("TRACE_OUT");
  out = fopen(path ? path : "trace.csv", "w");
  if (!out) return 0;
  cuptiActivityRegisterCallbacks(on_request, on_complete);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
  atexit(finish);
  return 1;
}
