#pragma once
// <objc/NSObject.h> + <Foundation/NSObjCRuntime.h>: the root class and the basic types.
#ifndef __OBJC__
#error "Foundation/NSObject.h needs Objective-C"
#endif
#include <stddef.h>
#include <stdint.h>

// Availability and annotation markers (Apple: <Availability.h>, <Foundation/NSObjCRuntime.h>).
#define API_AVAILABLE(...)
#define API_UNAVAILABLE(...)
#define API_DEPRECATED(...)
#define MTL_EXPORT
#define MPS_EXPORT
#define NS_RETURNS_INNER_POINTER __attribute__((objc_returns_inner_pointer))
#define NS_DESIGNATED_INITIALIZER __attribute__((objc_designated_initializer))
#define NS_ASSUME_NONNULL_BEGIN _Pragma("clang assume_nonnull begin")
#define NS_ASSUME_NONNULL_END _Pragma("clang assume_nonnull end")
#define NS_ENUM(_type, _name) enum _name : _type _name; enum _name : _type
// In C++ an options type is its integer type, so `options |= flag` compiles (Apple: NS_OPTIONS
// under __cplusplus).
#define NS_OPTIONS(_type, _name) _type _name; enum : _type
#define NS_SWIFT_NAME(...)
#define NS_REFINED_FOR_SWIFT

// <objc/objc.h>
#define nil nullptr
#define Nil nullptr
// arm64 macOS: OBJC_BOOL_IS_BOOL
typedef bool BOOL;
#define YES true
#define NO false
typedef long NSInteger;
typedef unsigned long NSUInteger;
typedef double CFTimeInterval;
typedef double NSTimeInterval;

@class NSString;

@protocol NSObject
- (BOOL)isEqual:(id)object;
@property (readonly) NSUInteger hash;
- (instancetype)retain;
- (oneway void)release;
- (instancetype)autorelease;
- (NSUInteger)retainCount;
- (BOOL)isKindOfClass:(Class)aClass;
- (BOOL)respondsToSelector:(SEL)aSelector;
@property (readonly, copy) NSString* description;
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject> {
  Class isa;
}
+ (instancetype)alloc;
+ (instancetype)new;
- (instancetype)init;
- (void)dealloc;
- (id)copy;
- (id)mutableCopy;
+ (Class)class;
@end

@protocol NSCopying
- (id)copyWithZone:(void*)zone;
@end
