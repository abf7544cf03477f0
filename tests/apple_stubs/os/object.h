#pragma once
// <os/object.h>: OS objects are Objective-C objects when compiled as Objective-C
// (OS_OBJECT_USE_OBJC), opaque struct pointers otherwise.
#if defined(__OBJC__)
#define OS_OBJECT_USE_OBJC 1
#import <Foundation/NSObject.h>
#define OS_OBJECT_DECL(name) \
  @protocol OS_##name <NSObject> \
  @end \
  typedef NSObject<OS_##name>* name##_t
#define OS_OBJECT_DECL_SUBCLASS(name, super) \
  @protocol OS_##name <OS_##super> \
  @end \
  typedef NSObject<OS_##name>* name##_t
#else
#define OS_OBJECT_USE_OBJC 0
#define OS_OBJECT_DECL(name) typedef struct name##_s* name##_t
#define OS_OBJECT_DECL_SUBCLASS(name, super) typedef struct name##_s* name##_t
#endif
