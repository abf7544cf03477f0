#pragma once
// <MetalPerformanceShaders/MetalPerformanceShaders.h>: MPSCommandBuffer (MPSCore/MPSCommandBuffer.h).
#ifndef __OBJC__
#error "MetalPerformanceShaders.h needs Objective-C"
#endif
#import <Metal/Metal.h>

NS_ASSUME_NONNULL_BEGIN

// ---- MPSCore/MPSCoreTypes.h ----------------------------------------------------------------
typedef NS_ENUM(uint32_t, MPSDataType) {
  MPSDataTypeInvalid = 0,
  MPSDataTypeFloatBit = 0x10000000,
  MPSDataTypeFloat32 = MPSDataTypeFloatBit | 32,
  MPSDataTypeFloat16 = MPSDataTypeFloatBit | 16,
  MPSDataTypeComplexBit = 0x01000000,
  MPSDataTypeComplexFloat32 = MPSDataTypeFloatBit | MPSDataTypeComplexBit | 64,
  MPSDataTypeComplexFloat16 = MPSDataTypeFloatBit | MPSDataTypeComplexBit | 32,
  MPSDataTypeSignedBit = 0x20000000,
  MPSDataTypeIntBit = MPSDataTypeSignedBit,
  MPSDataTypeInt8 = MPSDataTypeSignedBit | 8,
  MPSDataTypeInt16 = MPSDataTypeSignedBit | 16,
  MPSDataTypeInt32 = MPSDataTypeSignedBit | 32,
  MPSDataTypeInt64 = MPSDataTypeSignedBit | 64,
  MPSDataTypeUInt8 = 8,
  MPSDataTypeUInt16 = 16,
  MPSDataTypeUInt32 = 32,
  MPSDataTypeUInt64 = 64,
  MPSDataTypeAlternateEncodingBit = 0x80000000,
  MPSDataTypeBool = MPSDataTypeAlternateEncodingBit | 8,
  MPSDataTypeBFloat16 = MPSDataTypeAlternateEncodingBit | MPSDataTypeFloat16,
  MPSDataTypeNormalizedBit = 0x40000000,
  MPSDataTypeUnorm1 = MPSDataTypeNormalizedBit | 1,
  MPSDataTypeUnorm8 = MPSDataTypeNormalizedBit | 8,
};

typedef NSArray<NSNumber*> MPSShape;

// ---- MPSCore/MPSKernel.h, MPSNDArray/MPSNDArray.h ------------------------------------------
@interface MPSKernel : NSObject <NSCopying>
@property (readonly, retain, nonnull) id<MTLDevice> device;
@property (copy, atomic, nullable) NSString* label;
- (nonnull instancetype)initWithDevice:(nonnull id<MTLDevice>)device NS_DESIGNATED_INITIALIZER;
@end

@interface MPSNDArray : NSObject
@property (readonly, nonatomic) MPSDataType dataType;
@property (readonly, nonatomic) NSUInteger numberOfDimensions;
@property (readonly, retain, nonatomic) id<MTLDevice> device;
@end

// A command buffer that can commit its work so far and keep accepting more
// (commitAndContinue swaps in a fresh underlying MTLCommandBuffer, `commandBuffer`).
@interface MPSCommandBuffer : NSObject <MTLCommandBuffer>
@property (readonly, retain, nonnull) id<MTLCommandBuffer> commandBuffer;
@property (readonly, retain, nonnull) id<MTLCommandBuffer> rootCommandBuffer;
+ (nonnull instancetype)commandBufferWithCommandBuffer:(nonnull id<MTLCommandBuffer>)commandBuffer;
+ (nonnull instancetype)commandBufferFromCommandQueue:(nonnull id<MTLCommandQueue>)commandQueue;
- (nonnull instancetype)initWithCommandBuffer:(nonnull id<MTLCommandBuffer>)commandBuffer NS_DESIGNATED_INITIALIZER;
- (void)commitAndContinue;
- (void)prefetchHeapForWorkloadSize:(size_t)size;
@end

NS_ASSUME_NONNULL_END
