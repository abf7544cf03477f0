#pragma once
// <MetalPerformanceShadersGraph/MetalPerformanceShadersGraph.h>: the MPSGraph classes our
// files use (MPSGraph.h, MPSGraphCore.h, MPSGraphTensorData.h, MPSGraphExecutable.h).
#ifndef __OBJC__
#error "MetalPerformanceShadersGraph.h needs Objective-C"
#endif
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

NS_ASSUME_NONNULL_BEGIN

@interface MPSGraphObject : NSObject
@end
@interface MPSGraphType : MPSGraphObject <NSCopying>
@end
@interface MPSGraphTensor : NSObject <NSCopying>
@end
@interface MPSGraphOperation : NSObject <NSCopying>
@end
@interface MPSGraphTensorData : MPSGraphObject
@end
@interface MPSGraphShapedType : MPSGraphType
@end

typedef NSDictionary<MPSGraphTensor*, MPSGraphTensorData*> MPSGraphTensorDataDictionary;

typedef NS_ENUM(uint64_t, MPSGraphOptimization) {
  MPSGraphOptimizationLevel0 = 0,
  MPSGraphOptimizationLevel1 = 1,
};

@interface MPSGraphCompilationDescriptor : MPSGraphObject <NSCopying>
@property (readwrite, nonatomic) MPSGraphOptimization optimizationLevel;
@end

@interface MPSGraphExecutionDescriptor : MPSGraphObject
@property (readwrite, atomic) BOOL waitUntilCompleted;
@property (readwrite, atomic, copy, nullable) MPSGraphCompilationDescriptor* compilationDescriptor;
@end

@interface MPSGraph : MPSGraphObject
+ (instancetype)new;
- (instancetype)init;
- (void)encodeToCommandBuffer:(MPSCommandBuffer*)commandBuffer
                        feeds:(MPSGraphTensorDataDictionary*)feeds
             targetOperations:(nullable NSArray<MPSGraphOperation*>*)targetOperations
            resultsDictionary:(MPSGraphTensorDataDictionary*)resultsDictionary
          executionDescriptor:(nullable MPSGraphExecutionDescriptor*)executionDescriptor;
@end

NS_ASSUME_NONNULL_END
