#pragma once
// <dispatch/dispatch.h>: the Grand Central Dispatch API our files and the v2.14.1 headers use.
// Dispatch objects are Objective-C objects in Objective-C mode (OS_OBJECT_USE_OBJC) and
// opaque struct pointers in C/C++ (nullability annotations omitted: g++ parses this too); the
// block-based API exists only with __BLOCKS__.
#include <stdint.h>
#include <os/object.h>

#if OS_OBJECT_USE_OBJC
OS_OBJECT_DECL(dispatch_object);
#define DISPATCH_DECL(name) OS_OBJECT_DECL_SUBCLASS(name, dispatch_object)
#elif defined(__cplusplus)
typedef struct dispatch_object_s {
 private:
  dispatch_object_s();
  ~dispatch_object_s();
}* dispatch_object_t;
#define DISPATCH_DECL(name) \
  typedef struct name##_s : public dispatch_object_s { \
  }* name##_t
#else
typedef struct dispatch_object_s* dispatch_object_t;
#define DISPATCH_DECL(name) typedef struct name##_s* name##_t
#endif
DISPATCH_DECL(dispatch_queue);
DISPATCH_DECL(dispatch_queue_attr);
DISPATCH_DECL(dispatch_semaphore);

typedef uint64_t dispatch_time_t;
typedef void (*dispatch_function_t)(void*);
#define DISPATCH_TIME_NOW (0ull)
#define DISPATCH_TIME_FOREVER (~0ull)
#define DISPATCH_QUEUE_SERIAL NULL
#define DISPATCH_QUEUE_PRIORITY_DEFAULT 0

#ifdef __cplusplus
extern "C" {
#endif

dispatch_queue_t dispatch_queue_create(const char* label, dispatch_queue_attr_t attr);
dispatch_queue_t dispatch_get_global_queue(intptr_t identifier, uintptr_t flags);
void dispatch_sync_f(dispatch_queue_t queue, void* context, dispatch_function_t work);
void dispatch_async_f(dispatch_queue_t queue, void* context, dispatch_function_t work);
void dispatch_queue_set_specific(dispatch_queue_t queue, const void* key, void* context,
                                 dispatch_function_t destructor);
void* dispatch_queue_get_specific(dispatch_queue_t queue, const void* key);
void* dispatch_get_specific(const void* key);
const char* dispatch_queue_get_label(dispatch_queue_t queue);

dispatch_semaphore_t dispatch_semaphore_create(intptr_t value);
intptr_t dispatch_semaphore_wait(dispatch_semaphore_t dsema, dispatch_time_t timeout);
intptr_t dispatch_semaphore_signal(dispatch_semaphore_t dsema);
dispatch_time_t dispatch_time(dispatch_time_t when, int64_t delta);

void dispatch_retain(dispatch_object_t object);
void dispatch_release(dispatch_object_t object);

#ifdef __BLOCKS__
typedef void (^dispatch_block_t)(void);
void dispatch_sync(dispatch_queue_t queue, dispatch_block_t block);
void dispatch_async(dispatch_queue_t queue, dispatch_block_t block);
#endif

#ifdef __cplusplus
}
#endif
